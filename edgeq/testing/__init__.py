"""What edgeq's tests and scripts share: the referees (onnxruntime, LiteRT in a child process, our own
runtime driven the same way), builders of ONNX and IR test models, the .tflite mutations of the fuzzer,
and the task metrics of the real-world models.

Nothing is imported here: each submodule pulls in its own heavy dependencies (onnx, onnxruntime, LiteRT,
torch), so ``import edgeq`` and ``import edgeq.testing`` stay as light as the runtime.
"""
