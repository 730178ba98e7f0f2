"""`vitedge build`: a deployable artifact for the machine it runs on, a TensorRT engine
where TensorRT and a GPU are present, else an optimized ONNX Runtime model."""

from vitedge.build.builder import BuildOptions, BuildResult, build

__all__ = ["BuildOptions", "BuildResult", "build"]
