"""The TFLite flatbuffer format, apart from the IR: the schema mapping, the reader and the writer side by side."""
from edgeq.runtime.tflite_format.reader import read_tflite
from edgeq.runtime.tflite_format.writer import write_tflite

__all__ = ["read_tflite", "write_tflite"]
