"""The torch-free runtime: preprocessing, patchify, backends and the pipeline.
Importable on a device that has numpy, Pillow and onnxruntime or TensorRT, and no torch."""
