"""FP32 ONNX -> INT8 (explicit Q/DQ, placed the way ViTs need) or FP16, in the graph itself,
as TensorRT 10 (strongly typed) and 11 take precision.

- `calibrate.py`: activation ranges from real images (streamed histograms `histogram.py`,
  the table `table.py`, SmoothQuant-style channel equalisation `equalize.py`);
- `qdq.py`: where the Q/DQ go; `fp16.py`: the FP16 conversion; `graph.py`: what they need
  to know of a ViT graph;
- `quantizer.py`: the stage (`quantize_model`), with its TensorRT parser check and its
  comparison with FP32."""
