"""edgeq's converter: ONNX (or float TFLite) -> pruned, quantized TFLite flatbuffer."""
