"""What a microcontroller build of a model needs: the flatbuffer as a C array, and which of its ops
TensorFlow Lite Micro has no kernel for."""
from __future__ import annotations

import re

from edgeq.runtime.ir import Graph

# The builtin ops TensorFlow Lite Micro's op resolver can register (its MicroMutableOpResolver's
# Add... methods), by their schema names.
TFLM_BUILTIN_OPS = frozenset("""
    ABS ADD ADD_N ARG_MAX ARG_MIN ASSIGN_VARIABLE AVERAGE_POOL_2D BATCH_MATMUL BATCH_TO_SPACE_ND
    BROADCAST_ARGS BROADCAST_TO CALL_ONCE CAST CEIL CONCATENATION CONV_2D COS CUMSUM DEPTH_TO_SPACE
    DEPTHWISE_CONV_2D DEQUANTIZE DIV ELU EMBEDDING_LOOKUP EQUAL EXP EXPAND_DIMS FILL FLOOR FLOOR_DIV
    FLOOR_MOD FULLY_CONNECTED GATHER GATHER_ND GREATER GREATER_EQUAL HARD_SWISH IF L2_NORMALIZATION
    L2_POOL_2D LEAKY_RELU LESS LESS_EQUAL LOG LOG_SOFTMAX LOGICAL_AND LOGICAL_NOT LOGICAL_OR LOGISTIC
    MAXIMUM MAX_POOL_2D MEAN MINIMUM MIRROR_PAD MUL NEG NOT_EQUAL PACK PAD PADV2 PRELU QUANTIZE
    READ_VARIABLE REDUCE_MAX RELU RELU6 RESHAPE RESIZE_BILINEAR RESIZE_NEAREST_NEIGHBOR ROUND RSQRT
    SELECT_V2 SHAPE SIN SLICE SOFTMAX SPACE_TO_BATCH_ND SPACE_TO_DEPTH SPLIT SPLIT_V SQUEEZE SQRT SQUARE
    SQUARED_DIFFERENCE STRIDED_SLICE SUB SUM SVDF TANH TRANSPOSE TRANSPOSE_CONV
    UNIDIRECTIONAL_SEQUENCE_LSTM UNPACK VAR_HANDLE WHILE ZEROS_LIKE
""".split())

# The custom ops it ships kernels for, by custom code.
TFLM_CUSTOM_OPS = frozenset({"TFLite_Detection_PostProcess", "CIRCULAR_BUFFER", "ethos-u"})


def ops_tflm_lacks(graph: Graph) -> list:
    """The op kinds of ``graph`` (sorted, each once) that TensorFlow Lite Micro cannot run."""
    lacking = set()
    for op in graph.ops:
        if op.type == "CUSTOM":
            if op.options.get("custom_code", "") not in TFLM_CUSTOM_OPS:
                lacking.add(op.kind)
        elif op.type not in TFLM_BUILTIN_OPS:
            lacking.add(op.kind)
    return sorted(lacking)


def c_identifier(text: str) -> str:
    """A valid C identifier made from a file name: other characters become '_', and a leading digit
    gets a '_' before it."""
    name = re.sub(r"\W", "_", text, flags=re.ASCII) or "model"
    return f"_{name}" if name[0].isdigit() else name


def c_array_source(content: bytes, name: str, header: str = "", bytes_per_line: int = 12) -> str:
    """A C/C++ source that defines ``content`` as ``NAME[]`` (16-byte aligned, as TFLite Micro wants
    the model) and its length as ``NAME_len``; ``header`` names the header to include, if any."""
    lines = [f"// {len(content)} bytes of a TFLite flatbuffer, written by edgeq export-c.", ""]
    # C++11 has alignas built in; C11 has it from <stdalign.h>.
    lines += ["#ifndef __cplusplus", "#include <stdalign.h>", "#endif", ""]
    if header:
        lines += [f'#include "{header}"', ""]
    lines.append(f"alignas(16) const unsigned char {name}[] = {{")
    for start in range(0, len(content), bytes_per_line):
        chunk = content[start:start + bytes_per_line]
        lines.append("  " + ", ".join(f"0x{byte:02x}" for byte in chunk) + ",")
    lines += ["};", f"const unsigned int {name}_len = {len(content)};", ""]
    return "\n".join(lines)


def c_header_source(name: str) -> str:
    """The declarations of ``c_array_source``'s array and length; in C++ they also give the two
    ``const`` definitions external linkage."""
    guard = f"{name.upper()}_H_"
    return "\n".join([
        f"#ifndef {guard}", f"#define {guard}", "",
        f"extern const unsigned char {name}[];",
        f"extern const unsigned int {name}_len;", "",
        f"#endif  // {guard}", "",
    ])
