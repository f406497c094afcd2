"""The mapping between the IR and the TFLite flatbuffer schema, derived from the ``tflite`` binding.

Builtin operator codes come from ``tflite.BuiltinOperator``; each op's options table class is found by
name (``CONV_2D`` -> ``Conv2DOptions``) with a short table for the ops that share a table. The fields
of an options table, their slot types and defaults are learnt by calling the binding's generated
``<Table>Add<Field>`` functions on a recording stand-in for ``flatbuffers.Builder``, so a newer
binding brings its new fields along. Only which fields hold enums is stated here, because the binding
erases enum types to plain integers.
"""
from __future__ import annotations

import importlib
import re
from dataclasses import dataclass
from functools import lru_cache
from typing import Optional

import flatbuffers
import numpy as np
import tflite

from edgeq.runtime.ir import ModelError

# The flatbuffer's file identifier (bytes 4..8) and the schema version edgeq reads and writes.
FILE_IDENTIFIER = b"TFL3"
SCHEMA_VERSION = 3


def _enum_members(enum_class) -> dict:
    """Name -> value of a generated flatbuffers enum class."""
    return {k: v for k, v in vars(enum_class).items() if not k.startswith("_") and isinstance(v, int)}


def _camel_to_snake(name: str) -> str:
    """flatc's CamelCase field name back to the schema's snake_case (DilationWFactor -> dilation_w_factor)."""
    return re.sub(r"(?<=[a-z0-9])(?=[A-Z])|(?<=[A-Z])(?=[A-Z][a-z])", "_", name).lower()


# -- operators ----------------------------------------------------------------------------------

BUILTIN_CODES: dict = {
    name: code
    for name, code in _enum_members(tflite.BuiltinOperator).items()
    if name != "PLACEHOLDER_FOR_GREATER_OP_CODES"
}
BUILTIN_NAMES: dict = {code: name for name, code in BUILTIN_CODES.items()}

# Ops whose options table is not named after the op.
_SHARED_OPTIONS = {
    "MAX_POOL_2D": "Pool2DOptions",
    "AVERAGE_POOL_2D": "Pool2DOptions",
    "L2_POOL_2D": "Pool2DOptions",
    "MAXIMUM": "MaximumMinimumOptions",
    "MINIMUM": "MaximumMinimumOptions",
    "MEAN": "ReducerOptions",
    "SUM": "ReducerOptions",
    "REDUCE_MAX": "ReducerOptions",
    "REDUCE_MIN": "ReducerOptions",
    "REDUCE_PROD": "ReducerOptions",
    "REDUCE_ANY": "ReducerOptions",
    "REDUCE_ALL": "ReducerOptions",
    "L2_NORMALIZATION": "L2NormOptions",
    "UNIDIRECTIONAL_SEQUENCE_RNN": "SequenceRNNOptions",
    "CONV_3D_TRANSPOSE": "Conv3DOptions",
    "RANDOM_UNIFORM": "RandomOptions",
    "RANDOM_STANDARD_NORMAL": "RandomOptions",
    "MULTINOMIAL": "RandomOptions",
}

_OPTIONS_UNION: dict = {
    name: value for name, value in _enum_members(tflite.BuiltinOptions).items() if name != "NONE"
}


def builtin_code(op_type: str) -> int:
    try:
        return BUILTIN_CODES[op_type]
    except KeyError:
        raise ModelError(f"unknown builtin operator '{op_type}'") from None


@lru_cache(maxsize=None)
def options_table_name(op_type: str) -> Optional[str]:
    """The options table of ``op_type`` in the BuiltinOptions union (``"Conv2DOptions"``), or None."""
    if op_type in _SHARED_OPTIONS:
        return _SHARED_OPTIONS[op_type]
    wanted = op_type.replace("_", "").lower() + "options"
    for table in _OPTIONS_UNION:
        if table.lower() == wanted:
            return table
    return None


def options_union_type(table: str) -> int:
    return _OPTIONS_UNION[table]


# -- enums --------------------------------------------------------------------------------------

# Options fields that hold an enum, by snake_case field name (the binding types them as ints).
_ENUM_FIELDS = {
    "padding": tflite.Padding,
    "fused_activation_function": tflite.ActivationFunctionType,
    "weights_format": tflite.FullyConnectedOptionsWeightsFormat,
    "mode": tflite.MirrorPadMode,
    "quantized_bias_type": tflite.TensorType,
    "in_data_type": tflite.TensorType,
    "out_data_type": tflite.TensorType,
    "output_type": tflite.TensorType,
    "out_type": tflite.TensorType,
    "idx_out_type": tflite.TensorType,
    "key_dtype": tflite.TensorType,
    "value_dtype": tflite.TensorType,
    "type": tflite.LSHProjectionType,
    "combiner": tflite.CombinerType,
    "kernel_type": tflite.LSTMKernelType,
    "reduce_function": tflite.ReduceWindowFunction,
}


@lru_cache(maxsize=None)
def _enum_values(enum_class) -> dict:
    return _enum_members(enum_class)


@lru_cache(maxsize=None)
def _enum_names(enum_class) -> dict:
    return {v: k for k, v in _enum_members(enum_class).items()}


# -- tensor types -------------------------------------------------------------------------------

def _numpy_dtype_of(type_name: str) -> Optional[np.dtype]:
    """The numpy dtype spelled like a TensorType name (FLOAT32 -> float32), or None (STRING, INT4...)."""
    try:
        dtype = np.dtype(type_name.lower())
    except TypeError:
        return None
    return dtype if dtype.name == type_name.lower() else None


TENSOR_TYPE_TO_DTYPE: dict = {
    code: dtype
    for name, code in _enum_members(tflite.TensorType).items()
    if (dtype := _numpy_dtype_of(name)) is not None
}
DTYPE_TO_TENSOR_TYPE: dict = {dtype: code for code, dtype in TENSOR_TYPE_TO_DTYPE.items()}


def tensor_type(dtype) -> int:
    try:
        return DTYPE_TO_TENSOR_TYPE[np.dtype(dtype)]
    except KeyError:
        raise ModelError(f"dtype {np.dtype(dtype)} has no TFLite tensor type") from None


def numpy_dtype(type_code: int) -> np.dtype:
    try:
        return TENSOR_TYPE_TO_DTYPE[type_code]
    except KeyError:
        name = _enum_names(tflite.TensorType).get(type_code, str(type_code))
        raise ModelError(f"tensor type {name} is not supported") from None


def tensor_type_name(dtype) -> str:
    return _enum_names(tflite.TensorType)[tensor_type(dtype)]


# -- options fields -----------------------------------------------------------------------------

@dataclass(frozen=True)
class OptionsField:
    """One field of an options table, as the binding's generated functions describe it."""

    name: str                       # snake_case, the IR's options key
    accessor: str                   # CamelCase reader method (``StrideW``)
    add: object                     # ``<Table>Add<Field>(builder, value)``
    kind: str                       # "scalar", "vector" or "unsupported" (strings, sub-tables)
    default: object = None          # scalar default (an enum name for enum fields)
    scalar_type: str = ""           # "Int8", "Int32", "Float32", "Bool", ...
    enum: object = None             # the tflite enum class for enum fields
    start_vector: object = None     # ``<Table>Start<Field>Vector(builder, n)``
    vector_dtype: Optional[np.dtype] = None

    def to_ir(self, raw):
        """A value read from the flatbuffer, in the IR's form."""
        if self.enum is not None:
            names = _enum_names(self.enum)
            if raw not in names:
                raise ModelError(f"options field '{self.name}': {raw} is not a {self.enum.__name__}")
            return names[raw]
        if self.scalar_type == "Bool":
            return bool(raw)
        if self.scalar_type.startswith("Float"):
            return float(raw)
        return int(raw)

    def to_flatbuffer(self, value):
        """An IR value as the scalar the builder slot takes."""
        if self.enum is not None:
            values = _enum_values(self.enum)
            if value not in values:
                raise ModelError(f"options field '{self.name}': '{value}' is not a {self.enum.__name__} name")
            return values[value]
        if self.scalar_type == "Bool":
            return bool(value)
        if self.scalar_type.startswith("Float"):
            return float(value)
        return int(value)


class _RecordingBuilder:
    """Stands in for flatbuffers.Builder and records which method a generated function calls."""

    def __init__(self):
        self.calls = []

    def __getattr__(self, method):
        def record(*args):
            self.calls.append((method, args))
            return 0

        return record


def _record_call(function, *args) -> tuple:
    recorder = _RecordingBuilder()
    function(recorder, *args)
    (call,) = recorder.calls
    return call


def _vector_element_dtype(module, table: str, field: str, start_vector) -> np.dtype:
    """Build a one-element vector of ``field`` and let the binding's reader tell its numpy dtype."""
    _, (elem_size, _, _) = _record_call(start_vector, 1)
    builder = flatbuffers.Builder(64)
    start_vector(builder, 1)
    for _ in range(elem_size):
        builder.PrependUint8(0)
    vector = builder.EndVector()
    getattr(module, f"{table}Start")(builder)
    getattr(module, f"{table}Add{field}")(builder, vector)
    builder.Finish(getattr(module, f"{table}End")(builder))
    reader = getattr(module, table).GetRootAs(builder.Output(), 0)
    return getattr(reader, f"{field}AsNumpy")().dtype


def _describe_field(module, table: str, field: str) -> OptionsField:
    add = getattr(module, f"{table}Add{field}")
    name = _camel_to_snake(field)
    method, args = _record_call(add, 0)
    if method == "PrependUOffsetTRelativeSlot":
        start_vector = getattr(module, f"{table}Start{field}Vector", None)
        if start_vector is None:
            return OptionsField(name, field, add, "unsupported")
        dtype = _vector_element_dtype(module, table, field, start_vector)
        return OptionsField(name, field, add, "vector", start_vector=start_vector, vector_dtype=dtype)
    scalar_type = method[len("Prepend"):-len("Slot")]
    enum = _ENUM_FIELDS.get(name)
    described = OptionsField(name, field, add, "scalar", scalar_type=scalar_type, enum=enum)
    return OptionsField(**{**described.__dict__, "default": described.to_ir(args[2])})


@lru_cache(maxsize=None)
def options_fields(table: str) -> tuple:
    """The fields of options table ``table``, in slot order."""
    module = importlib.import_module(f"tflite.{table}")
    prefix = f"{table}Add"
    fields = [_describe_field(module, table, fn[len(prefix):]) for fn in vars(module) if fn.startswith(prefix)]
    return tuple(fields)


def options_defaults(op_type: str) -> dict:
    """Every scalar and vector option of ``op_type`` at its schema default."""
    table = options_table_name(op_type)
    if table is None:
        return {}
    return {f.name: (f.default if f.kind == "scalar" else []) for f in options_fields(table) if f.kind != "unsupported"}


def options_with_defaults(op_type: str, options: dict) -> dict:
    """``options`` completed with the schema defaults: the form ``read_tflite`` gives back."""
    return {**options_defaults(op_type), **options}
