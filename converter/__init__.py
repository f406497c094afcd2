"""edgeq's converter: ONNX (or float TFLite) -> pruned, quantized TFLite flatbuffer."""
from edgeq.converter.api import ConversionResult, convert

__all__ = ["ConversionResult", "convert"]
