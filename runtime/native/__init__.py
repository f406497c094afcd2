"""The native int8 kernels: C with intrinsics (runtime/native/src), one library holding a variant per
instruction set (AVX512-VNNI, AVX-VNNI, AVX2 and portable C on x86-64; sdot and smlal NEON on
aarch64), the best one the CPU runs chosen once at load.

The library is an optional extension built at ``pip install`` time (setup.py); its functions are
called through ctypes, so it needs nothing beyond a C compiler. Without it, or with EDGEQ_NO_NATIVE=1,
the numpy kernels run, and the first kernel that asks says so once. EDGEQ_NATIVE_ISA=avx2|portable|...
forces a lower variant (tests run every variant the machine has that way, or through ``use_isa``).
``describe()`` tells which path runs. Where the CPU has AMX and Linux grants its tile state, avx512vnni
convolutions of 32 rows and more multiply on AMX tiles (same integers; ``amx()`` says whether they do,
EDGEQ_NO_AMX=1 or ``use_amx(False)`` keeps them on vector tiles).

Kernels ask ``isa()`` in prepare (None: use numpy) and keep the answer; everything static (packed
weights, the folded output stage) is made then, and eval is one call into the library.
"""
from __future__ import annotations

import ctypes
import logging
import os

import numpy as np

LOG = logging.getLogger(__name__)

ISA_CODES = {"portable": 0, "avx2": 1, "avxvnni": 2, "avx512vnni": 3, "neon": 4, "neon-dotprod": 5}
ISA_NAMES = {code: name for name, code in ISA_CODES.items()}
# Best first: the variant chosen when nothing is forced.
_PREFERENCE = ("avx512vnni", "avxvnni", "avx2", "neon-dotprod", "neon", "portable")

# None until the first kernel asks; then whether prepare uses the native kernels. Tests set it.
ENABLED = None
_library = None
_unavailable_reason = None
_loaded = False
_isa = None          # the variant kernels prepared now use (a name), when the library is there
_threads = 1         # threads the kernels may use during the current invoke (set by the interpreter)


class OutputStage(ctypes.Structure):
    """native.h's edgeq_output_stage; the arrays it points to are kept alive by ``arrays``."""
    _fields_ = [("kind", ctypes.c_int32), ("offset", ctypes.c_int32), ("low", ctypes.c_int32),
                ("high", ctypes.c_int32), ("multiplier", ctypes.c_void_p), ("bias", ctypes.c_void_p),
                ("threshold", ctypes.c_void_p), ("correction", ctypes.c_void_p), ("shift", ctypes.c_void_p),
                ("scale", ctypes.c_void_p), ("lanes", ctypes.c_void_p)]


class ConvGeometry(ctypes.Structure):
    """native.h's edgeq_conv_geometry."""
    _fields_ = [(name, ctypes.c_int32) for name in (
        "batch", "in_h", "in_w", "in_c", "out_h", "out_w", "out_c", "k_h", "k_w", "stride_h", "stride_w",
        "dil_h", "dil_w", "pad_top", "pad_left", "input_zero_point")]


class PointwiseF32(ctypes.Structure):
    """native.h's edgeq_pointwise_f32; the arrays it points to are kept alive by ``arrays``."""
    _fields_ = [("n", ctypes.c_int32), ("packed", ctypes.c_void_p), ("bias", ctypes.c_void_p),
                ("low", ctypes.c_float), ("high", ctypes.c_float)]


class AddParams(ctypes.Structure):
    """native.h's edgeq_add_params."""
    _fields_ = [(name, ctypes.c_int32) for name in (
        "input1_offset", "input2_offset", "left_shift", "input1_multiplier", "input1_shift", "input2_multiplier",
        "input2_shift", "output_multiplier", "output_shift", "output_offset", "low", "high", "subtract")]


def _environment_disabled() -> bool:
    return os.environ.get("EDGEQ_NO_NATIVE", "").strip() not in ("", "0")


def _open_library():
    """(ctypes library, None) or (None, why not)."""
    if _environment_disabled():
        return None, "disabled by EDGEQ_NO_NATIVE"
    try:
        from edgeq.runtime.native import _kernels
    except ImportError:
        return None, "the extension is not built (reinstall edgeq where a C compiler is present)"
    try:
        library = ctypes.CDLL(_kernels.__file__)
    except OSError as error:
        return None, f"the extension does not load ({error})"
    pointer, int32, size = ctypes.c_void_p, ctypes.c_int, ctypes.c_size_t
    for name, result, arguments in (
            ("edgeq_isa_compiled", int32, [int32]),
            ("edgeq_isa_supported", int32, [int32]),
            ("edgeq_isa_input_shift", int32, [int32]),
            ("edgeq_packed_bytes", ctypes.c_size_t, [int32, int32]),
            ("edgeq_amx_set", int32, [int32]),
            ("edgeq_pack_weights", None, [int32, int32, pointer, pointer]),
            ("edgeq_stage_lanes_bytes", ctypes.c_size_t, [int32]),
            ("edgeq_stage_lanes_prepare", int32, [pointer, int32, pointer]),
            ("edgeq_output_stage_rows", int32, [int32, pointer, pointer, int32, int32, pointer]),
            ("edgeq_conv", int32, [int32, pointer, pointer, pointer, pointer, pointer, int32]),
            ("edgeq_depthwise", int32, [int32, pointer, int32, pointer, pointer, pointer, pointer, int32]),
            ("edgeq_add_int8", None, [int32, pointer, pointer, ctypes.c_size_t, pointer, pointer]),
            ("edgeq_max_pool_int8", None, [pointer, pointer, int32, int32, pointer]),
            ("edgeq_depthwise_pairs_packed_bytes", ctypes.c_size_t, [int32, int32, int32]),
            ("edgeq_depthwise_pairs_pack", int32, [int32, int32, int32, pointer, pointer]),
            ("edgeq_depthwise_pairs", int32, [int32, pointer, pointer, pointer, pointer, pointer, int32]),
            ("edgeq_max_pool_int8_isa", None, [int32, pointer, pointer, int32, int32, pointer]),
            ("edgeq_lookup_pairs_int8", None, [int32, pointer, pointer, ctypes.c_size_t, pointer, pointer]),
            ("edgeq_quantize_to_int8", None,
             [int32, pointer, ctypes.c_size_t, ctypes.c_float, int32, int32, int32, pointer]),
            ("edgeq_dequantize_int8", None, [int32, pointer, ctypes.c_size_t, ctypes.c_double, int32, pointer]),
            ("edgeq_depthwise_f32", int32, [int32, pointer, int32, pointer, pointer, pointer, ctypes.c_float,
                                            ctypes.c_float, pointer, int32]),
            ("edgeq_bias_activation_f32", None, [int32, pointer, ctypes.c_size_t, int32, pointer, ctypes.c_float,
                                                 ctypes.c_float]),
            ("edgeq_pool_f32", None, [int32, int32, pointer, pointer, ctypes.c_float, ctypes.c_float, pointer]),
            ("edgeq_average_pool_int8", None, [int32, pointer, pointer, int32, int32, pointer, pointer]),
            ("edgeq_im2col_f32", None, [pointer, pointer, ctypes.c_float, pointer]),
            ("edgeq_pool_workers", int32, []),
            ("edgeq_pool_f32_split", None, [int32, int32, pointer, pointer, ctypes.c_float, ctypes.c_float, pointer,
                                            int32]),
            ("edgeq_max_pool_int8_split", None, [int32, pointer, pointer, int32, int32, pointer, int32]),
            ("edgeq_add_f32", None, [pointer, pointer, ctypes.c_size_t, ctypes.c_float, ctypes.c_float, pointer,
                                     int32]),
            ("edgeq_blas_sgemm_split", None, [pointer, int32, int32, int32, int32, pointer, ctypes.c_size_t,
                                              pointer, ctypes.c_size_t, int32, pointer, int32, int32, int32]),
            ("edgeq_quantize_to_int8_split", None,
             [int32, pointer, ctypes.c_size_t, ctypes.c_float, int32, int32, int32, pointer, int32]),
            ("edgeq_dequantize_int8_split", None,
             [int32, pointer, ctypes.c_size_t, ctypes.c_double, int32, pointer, int32]),
            ("edgeq_add_int8_split", None, [int32, pointer, pointer, ctypes.c_size_t, pointer, pointer, int32]),
            ("edgeq_lookup_pairs_int8_split", None,
             [int32, pointer, pointer, ctypes.c_size_t, pointer, pointer, int32]),
            ("edgeq_bias_activation_f32_split", None,
             [int32, pointer, ctypes.c_size_t, int32, pointer, ctypes.c_float, ctypes.c_float, int32]),
            ("edgeq_pool_shutdown", None, []),
            ("edgeq_sgemm_packed_floats", ctypes.c_size_t, [int32, int32, int32]),
            ("edgeq_sgemm_pack", None, [int32, int32, int32, pointer, pointer]),
            ("edgeq_sgemm", int32, [int32, int32, int32, int32, pointer, ctypes.c_size_t, pointer, pointer,
                                    ctypes.c_float, ctypes.c_float, pointer, int32]),
            ("edgeq_softmax_int8", None, [size, size, pointer, pointer, pointer, int32, pointer]),
            ("edgeq_mean_int8", None, [int32, size, size, size, pointer] + [int32] * 7 + [pointer, pointer]),
            ("edgeq_concat", None, [size, int32, pointer, pointer, pointer]),
            ("edgeq_conv_f32", int32, [int32, pointer, pointer, pointer, pointer, ctypes.c_float, ctypes.c_float,
                                       pointer, int32]),
            ("edgeq_pointwise_depthwise_f32", int32, [int32, pointer, pointer, int32, pointer, pointer, pointer, ctypes.c_float,
                                                      ctypes.c_float, pointer, pointer, ctypes.c_float, ctypes.c_float,
                                                      pointer, pointer, int32])):
        function = getattr(library, name, None)
        if function is None:
            return None, f"the extension is out of date (no {name}); reinstall edgeq to rebuild it"
        function.restype, function.argtypes = result, arguments
    return library, None


def _load():
    global _library, _unavailable_reason, _loaded, _isa
    if _loaded:
        return
    _loaded = True
    _library, _unavailable_reason = _open_library()
    if _library is None:
        LOG.warning("edgeq: native int8 kernels off, numpy kernels run: %s", _unavailable_reason)
        return
    _isa = best_isa()
    _library.edgeq_amx_set(0 if os.environ.get("EDGEQ_NO_AMX", "").strip() not in ("", "0") else 1)
    forced = os.environ.get("EDGEQ_NATIVE_ISA", "").strip().lower()
    if forced:
        if forced in supported_isas():
            _isa = forced
        else:
            LOG.warning("edgeq: EDGEQ_NATIVE_ISA=%s is not a variant this CPU runs (%s); using %s",
                        forced, ", ".join(supported_isas()), _isa)


def available() -> bool:
    """Whether the native library loaded (and is not disabled)."""
    _load()
    return _library is not None


def supported_isas() -> list:
    """The variants this build holds and this CPU runs, best first."""
    if not available():
        return []
    return [name for name in _PREFERENCE if _library.edgeq_isa_supported(ISA_CODES[name])]


def best_isa():
    supported = supported_isas()
    return supported[0] if supported else None


def enabled() -> bool:
    """Whether kernels prepared now use the native path."""
    global ENABLED
    if ENABLED is None:
        ENABLED = available()
    return bool(ENABLED) and available()


def isa():
    """The variant kernels prepared now use, or None for the numpy path."""
    return _isa if enabled() else None


def use_isa(name: str) -> None:
    """Make kernels prepared from now on use variant ``name`` (one of ``supported_isas()``)."""
    global _isa
    if name not in supported_isas():
        raise ValueError(f"native variant {name!r} is not available here (have: {supported_isas()})")
    _isa = name


def use_amx(on: bool) -> bool:
    """Let avx512vnni convolutions of 32 rows and more run on AMX tiles (where the CPU and OS have them;
    on by default, EDGEQ_NO_AMX=1 turns it off); returns whether they now do."""
    return bool(available() and _library.edgeq_amx_set(1 if on else 0))


def amx() -> bool:
    """Whether avx512vnni convolutions run on AMX tiles now."""
    if not available():
        return False
    return bool(_library.edgeq_amx_set(-1))


def describe() -> str:
    """One line naming the path int8 convolutions and FULLY_CONNECTED take."""
    if enabled():
        return f"native int8 kernels ({isa()})"
    _load()
    reason = _unavailable_reason or "turned off"
    return f"numpy int8 kernels (native: {reason})"


def set_threads(count: int) -> int:
    """Threads the native kernels may use from now on; returns the previous count."""
    global _threads
    previous, _threads = _threads, max(1, int(count))
    return previous


def threads() -> int:
    return _threads


def pool_workers() -> int:
    """Worker threads the native kernels' pool has started (they stay, parked, between calls)."""
    return int(_library.edgeq_pool_workers()) if available() else 0


def blas_sgemm_split(function: int, ilp64: bool, a, b, out, by_columns: bool, ranges: int) -> bool:
    """out = a @ b through the cblas_sgemm at address ``function``, in ``ranges`` ranges of a's rows (or
    of b's columns) on the pool's threads; a's rows and b's rows or columns must be contiguous. False
    when the library is absent."""
    if not available():
        return False
    rows, depth = a.shape
    transpose_b = b.strides[1] != 4  # b is the transpose of a row-major [columns][depth]
    ldb = (b.strides[1] if transpose_b else b.strides[0]) // 4
    _library.edgeq_blas_sgemm_split(function, int(ilp64), rows, b.shape[1], depth, a.ctypes.data, a.strides[0] // 4,
                                    b.ctypes.data, ldb, int(transpose_b), out.ctypes.data, int(by_columns), ranges,
                                    _threads)
    return True


def shutdown_pool() -> None:
    """Stop and join the pool's workers; the next parallel kernel starts them again."""
    if available():
        _library.edgeq_pool_shutdown()


def input_shift(isa_name: str) -> int:
    """What the variant adds to every int8 activation before its products (128 where the CPU's dot
    product multiplies unsigned by signed bytes); prepare folds -shift * sum(weights) into the bias."""
    return int(_library.edgeq_isa_input_shift(ISA_CODES[isa_name]))


# -- prepared kernels --------------------------------------------------------------------------------

_char_from_buffer, _addressof = ctypes.c_char.from_buffer, ctypes.addressof


def _address(array) -> int:
    """The address of a contiguous array's data. Through the buffer protocol where the array is writable:
    ``array.ctypes.data`` builds a helper object each time, and kernels ask on every call."""
    try:
        return _addressof(_char_from_buffer(array))
    except (TypeError, ValueError):  # read-only, or empty
        return array.ctypes.data


def folded_stage(folded, low: int, high: int) -> OutputStage:
    """An output stage in the folded fixed-point form (requantize.fold_requantization)."""
    arrays = [np.ascontiguousarray(a, dtype=np.int64) for a in folded[:5]]
    stage = OutputStage(0, 0, int(low), int(high), *[_address(a) for a in arrays], None, None)
    lanes = _aligned_bytes(int(_library.edgeq_stage_lanes_bytes(arrays[0].size)))
    if _library.edgeq_stage_lanes_prepare(ctypes.byref(stage), arrays[0].size, _address(lanes)):
        stage.lanes = _address(lanes)
        arrays.append(lanes)
    stage.arrays = arrays
    return stage


def _aligned_bytes(size: int) -> np.ndarray:
    """A zeroed writable uint8 buffer of ``size`` bytes starting on a 64-byte boundary."""
    raw = np.zeros(size + 64, np.uint8)
    offset = (-_address(raw)) % 64
    return raw[offset:offset + size]


def float_scale_stage(bias, scale, offset: int, low: int, high: int) -> OutputStage:
    """An output stage rounding double(acc + bias) * scale half away from zero (reference int8
    FULLY_CONNECTED), + offset, clamped."""
    bias = np.ascontiguousarray(bias, dtype=np.int64)
    scale = np.ascontiguousarray(scale, dtype=np.float64)
    stage = OutputStage(1, int(offset), int(low), int(high), None, _address(bias), None, None, None, _address(scale),
                        None)
    stage.arrays = [bias, scale]
    return stage


def output_stage(isa_name: str, stage: OutputStage, acc: np.ndarray) -> np.ndarray:
    """int8 [rows, channels] = ``stage`` applied to int32 accumulators [rows, channels] as the variant
    ``isa_name`` runs it after its GEMM (for tests: the stage alone, on chosen accumulators)."""
    acc = np.ascontiguousarray(acc, dtype=np.int32)
    out = np.empty(acc.shape, np.int8)
    if _library.edgeq_output_stage_rows(ISA_CODES[isa_name], ctypes.byref(stage), _address(acc), acc.shape[0],
                                        acc.shape[1], _address(out)):
        raise NativeError(f"native variant {isa_name} does not run here")
    return out


def pack_weights(weights: np.ndarray) -> np.ndarray:
    """int8 weights [out_c, depth] in the layout the GEMM micro-kernels read (a 64-byte aligned
    buffer, made once in prepare)."""
    weights = np.ascontiguousarray(weights, dtype=np.int8)
    out_c, depth = weights.shape
    size = int(_library.edgeq_packed_bytes(out_c, depth))
    raw = np.empty(size + 64, np.uint8)
    offset = (-_address(raw)) % 64
    packed = raw[offset:offset + size].view(np.int8)
    _library.edgeq_pack_weights(out_c, depth, _address(weights), _address(packed))
    return packed


def conv_geometry(**fields) -> ConvGeometry:
    return ConvGeometry(**{name: int(value) for name, value in fields.items()})


class GeometryPerBatch:
    """One ctypes geometry per batch size (the rest is fixed in prepare)."""

    def __init__(self, **fields):
        self.fields, self.by_batch = fields, {}

    def get(self, batch) -> ConvGeometry:
        geometry = self.by_batch.get(batch)
        if geometry is None:
            geometry = self.by_batch[batch] = conv_geometry(batch=batch, **self.fields)
        return geometry


class NativeError(RuntimeError):
    pass


def conv(isa_name: str, geometry: ConvGeometry, x: np.ndarray, packed: np.ndarray, stage: OutputStage,
         out: np.ndarray) -> np.ndarray:
    """out [batch, out_h, out_w, out_c] int8 = the convolution of x (NHWC int8, contiguous) with the
    packed weights, through ``stage``; ``geometry.batch`` must be x's batch."""
    status = _library.edgeq_conv(ISA_CODES[isa_name], ctypes.byref(geometry), _address(x), _address(packed),
                                 ctypes.byref(stage), _address(out), _threads)
    if status:
        raise NativeError(f"native convolution failed ({status})")
    return out


def depthwise(isa_name: str, geometry: ConvGeometry, depth_multiplier: int, x: np.ndarray, filters: np.ndarray,
              stage: OutputStage, out: np.ndarray) -> np.ndarray:
    """out = int8 DEPTHWISE_CONV_2D of x with int16 filters [k_h, k_w, out_c] through ``stage``."""
    status = _library.edgeq_depthwise(ISA_CODES[isa_name], ctypes.byref(geometry), depth_multiplier, _address(x),
                                      _address(filters), ctypes.byref(stage), _address(out), _threads)
    if status:
        raise NativeError(f"native depthwise convolution failed ({status})")
    return out


def pack_depthwise_pairs(isa_name: str, filters: np.ndarray):
    """int8 depthwise filters [taps, channels] packed in tap pairs for ``isa_name``'s pair kernel (made
    once in prepare), or None where the variant has no such kernel or refuses these weights (NEON's
    int16 pair sums: a weight of -128)."""
    filters = np.ascontiguousarray(filters, dtype=np.int8)
    taps, channels = filters.shape
    size = int(_library.edgeq_depthwise_pairs_packed_bytes(ISA_CODES[isa_name], taps, channels))
    if size == 0:
        return None
    packed = np.empty(size // 2, np.int16)
    if _library.edgeq_depthwise_pairs_pack(ISA_CODES[isa_name], taps, channels, _address(filters), _address(packed)):
        return None
    return packed


def depthwise_pairs(isa_name: str, geometry: ConvGeometry, x: np.ndarray, packed: np.ndarray, stage: OutputStage,
                    out: np.ndarray) -> np.ndarray:
    """out = int8 DEPTHWISE_CONV_2D (multiplier 1) of x with pair-packed filters through ``stage``."""
    status = _library.edgeq_depthwise_pairs(ISA_CODES[isa_name], ctypes.byref(geometry), _address(x),
                                            _address(packed), ctypes.byref(stage), _address(out), _threads)
    if status:
        raise NativeError(f"native depthwise convolution failed ({status})")
    return out


def add_int8(isa_name: str, params: AddParams, a: np.ndarray, b: np.ndarray, out: np.ndarray) -> np.ndarray:
    """TFLite's int8 ADD/SUB of same-shape contiguous arrays into ``out``."""
    _library.edgeq_add_int8_split(ISA_CODES[isa_name], _address(a), _address(b), a.size, ctypes.byref(params),
                                  _address(out), _threads)
    return out


def pair_table(isa_name: str, params: AddParams) -> np.ndarray:
    """The int8 ADD/SUB with ``params`` of every pair of int8 inputs: table[(a & 255) * 256 + (b & 255)],
    computed by the variant's own kernel (65536 values and 4 spare bytes for 32-bit gathers)."""
    grid = np.arange(-128, 128, dtype=np.int8)
    firsts, seconds = np.ascontiguousarray(np.repeat(grid, 256)), np.ascontiguousarray(np.tile(grid, 256))
    table = np.zeros(65536 + 4, np.int8)
    add_int8(isa_name, params, firsts, seconds, table[:65536])
    # rows and columns in the order of the unsigned bytes the lookup indexes with
    table[:65536] = np.roll(table[:65536].reshape(256, 256), (128, 128), axis=(0, 1)).reshape(-1)
    return table


def lookup_pairs_int8(isa_name: str, table: np.ndarray, a: np.ndarray, b: np.ndarray, out: np.ndarray) -> np.ndarray:
    """out = table[(a & 255) * 256 + (b & 255)] for same-shape contiguous int8 a, b."""
    _library.edgeq_lookup_pairs_int8_split(ISA_CODES[isa_name], _address(a), _address(b), a.size, _address(table),
                                           _address(out), _threads)
    return out


def quantize_int8(x: np.ndarray, scale, zero_point: int, low: int, high: int, out: np.ndarray,
                  isa_name=None) -> np.ndarray:
    """float32 -> int8 QUANTIZE of a contiguous array into ``out`` (vectorized on ``isa_name``)."""
    _library.edgeq_quantize_to_int8_split(ISA_CODES[isa_name or "portable"], _address(x), x.size, float(scale),
                                          int(zero_point), int(low), int(high), _address(out), _threads)
    return out


def dequantize_int8(isa_name: str, x: np.ndarray, scale, zero_point: int, out: np.ndarray) -> np.ndarray:
    """int8 -> float32 DEQUANTIZE (per-tensor) of a contiguous array into ``out``: float((x - zp) * scale)
    with the product in double, as the reference kernel."""
    _library.edgeq_dequantize_int8_split(ISA_CODES[isa_name], _address(x), x.size, float(scale), int(zero_point),
                                         _address(out), _threads)
    return out


def max_pool_int8(geometry: ConvGeometry, x: np.ndarray, low: int, high: int, out: np.ndarray,
                  isa_name=None) -> np.ndarray:
    """int8 MAX_POOL_2D (window max over in-input positions, clamped) of contiguous NHWC x (vectorized
    on ``isa_name``)."""
    _library.edgeq_max_pool_int8_split(ISA_CODES[isa_name or "portable"], ctypes.byref(geometry), _address(x),
                                       int(low), int(high), _address(out), _threads)
    return out


# -- float32 kernels (and int8 average pooling) --------------------------------------------------------
# They run on the vector unit of the variant ``isa_name`` names (AVX-512, AVX2 + FMA, NEON, or portable C).

def depthwise_f32(isa_name: str, geometry: ConvGeometry, depth_multiplier: int, x: np.ndarray, filters: np.ndarray,
                  bias, low: float, high: float, out: np.ndarray) -> np.ndarray:
    """out = float32 DEPTHWISE_CONV_2D of contiguous x with filters [k_h, k_w, out_c], + bias (or None),
    clamped to [low, high]."""
    status = _library.edgeq_depthwise_f32(ISA_CODES[isa_name], ctypes.byref(geometry), depth_multiplier,
                                          x.ctypes.data, filters.ctypes.data, None if bias is None else bias.ctypes.data,
                                          low, high, out.ctypes.data, _threads)
    if status:
        raise NativeError(f"native float depthwise convolution failed ({status})")
    return out


def bias_activation_f32(isa_name: str, out: np.ndarray, bias, low: float, high: float) -> np.ndarray:
    """out [rows, channels] (contiguous float32) = clamp(out + bias, low, high) in place; bias may be None."""
    rows, channels = out.shape
    _library.edgeq_bias_activation_f32_split(ISA_CODES[isa_name], out.ctypes.data, rows, channels,
                                             None if bias is None else bias.ctypes.data, low, high, _threads)
    return out


def add_f32(a: np.ndarray, b: np.ndarray, low: float, high: float, out: np.ndarray) -> np.ndarray:
    """out = clamp(a + b, low, high) for same-shape contiguous float32 arrays."""
    _library.edgeq_add_f32(a.ctypes.data, b.ctypes.data, a.size, low, high, out.ctypes.data, _threads)
    return out


def pool_f32(isa_name: str, average: bool, geometry: ConvGeometry, x: np.ndarray, low: float, high: float,
             out: np.ndarray) -> np.ndarray:
    """float32 MAX_POOL_2D (or AVERAGE_POOL_2D) of contiguous NHWC x over in-input positions, clamped."""
    _library.edgeq_pool_f32_split(ISA_CODES[isa_name], int(average), ctypes.byref(geometry), x.ctypes.data, low,
                                  high, out.ctypes.data, _threads)
    return out


def average_pool_int8(isa_name: str, geometry: ConvGeometry, x: np.ndarray, low: int, high: int,
                      scratch: np.ndarray, out: np.ndarray) -> np.ndarray:
    """int8 AVERAGE_POOL_2D of contiguous NHWC x; ``scratch`` holds in_c int32."""
    _library.edgeq_average_pool_int8(ISA_CODES[isa_name], ctypes.byref(geometry), x.ctypes.data, int(low), int(high),
                                     scratch.ctypes.data, out.ctypes.data)
    return out


def im2col_f32(geometry: ConvGeometry, x: np.ndarray, fill: float, columns: np.ndarray) -> np.ndarray:
    """columns [batch * out_h * out_w, k_h * k_w * in_c] = the patches of contiguous float32 x."""
    _library.edgeq_im2col_f32(ctypes.byref(geometry), x.ctypes.data, fill, columns.ctypes.data)
    return columns


# Bias of the float GEMM: padded with zeros to a multiple of the widest panel.
SGEMM_BIAS_MULTIPLE = 32


def sgemm_pack(isa_name: str, weights: np.ndarray) -> np.ndarray:
    """float32 weights [n, k] in the panels the variant's GEMM micro-kernel reads (64-byte aligned, made
    once in prepare)."""
    weights = np.ascontiguousarray(weights, dtype=np.float32)
    n, k = weights.shape
    count = int(_library.edgeq_sgemm_packed_floats(ISA_CODES[isa_name], k, n))
    raw = np.empty(count * 4 + 64, np.uint8)
    offset = (-raw.ctypes.data) % 64
    packed = raw[offset:offset + count * 4].view(np.float32)
    _library.edgeq_sgemm_pack(ISA_CODES[isa_name], k, n, weights.ctypes.data, packed.ctypes.data)
    return packed


def sgemm_caller(isa_name: str, packed: np.ndarray, n: int, bias, low: float, high: float):
    """``sgemm`` with everything but ``a`` and ``out`` bound once: call(a, out) -> out. Made in prepare,
    so a call converts only the two arrays (a kernel's fixed cost matters on small layers)."""
    function, code = _library.edgeq_sgemm, ISA_CODES[isa_name]
    packed_address = packed.ctypes.data
    bias_address = None if bias is None else bias.ctypes.data
    low, high = ctypes.c_float(low), ctypes.c_float(high)

    def call(a, out, _keep=(packed, bias)):
        if function(code, a.shape[0], a.shape[1], n, _address(a), a.strides[0] >> 2, packed_address, bias_address,
                    low, high, _address(out), _threads):
            raise NativeError("native float GEMM failed")
        return out

    return call


def conv_f32_caller(isa_name: str, packed: np.ndarray, bias, low: float, high: float):
    """A float CONV_2D as im2col + GEMM a band of pixels at a time (weights packed by ``sgemm_pack``, bias
    None or padded): call(geometry, x, out) -> out [batch, out_h, out_w, out_c], geometry by reference."""
    function, code = _library.edgeq_conv_f32, ISA_CODES[isa_name]
    packed_address = packed.ctypes.data
    bias_address = None if bias is None else bias.ctypes.data
    low, high = ctypes.c_float(low), ctypes.c_float(high)

    def call(geometry, x, out, _keep=(packed, bias)):
        if function(code, geometry, _address(x), packed_address, bias_address, low, high, _address(out), _threads):
            raise NativeError("native float convolution failed")
        return out

    return call


def pointwise_depthwise_f32_caller(isa_name: str, in_c: int, packed: np.ndarray, conv_bias, conv_bounds, filters,
                                   bias, bounds, project=None):
    """A float CONV_2D (weights packed by ``sgemm_pack``, bias None or padded) feeding a 3x3
    DEPTHWISE_CONV_2D (filters [3, 3, C], bias None or [C]), each with its clamp, and optionally the
    depthwise feeding a 1x1 CONV_2D ``project`` = (packed, out channels, bias, bounds), without the
    tensors between them: call(depthwise geometry, first convolution's geometry or None for a 1x1, x, out)
    -> out, geometries by reference; ``in_c`` is x's channels."""
    function, code = _library.edgeq_pointwise_depthwise_f32, ISA_CODES[isa_name]
    addresses = [None if a is None else a.ctypes.data for a in (packed, conv_bias, filters, bias)]
    conv_low, conv_high = (ctypes.c_float(v) for v in conv_bounds)
    low, high = (ctypes.c_float(v) for v in bounds)
    project_stage = None
    if project is not None:
        project_packed, channels, project_bias, (project_low, project_high) = project
        project_stage = PointwiseF32(channels, project_packed.ctypes.data,
                                     None if project_bias is None else project_bias.ctypes.data, project_low,
                                     project_high)
        project_stage.arrays = (project_packed, project_bias)
    project_address = None if project_stage is None else ctypes.addressof(project_stage)

    def call(geometry, first, x, out, _keep=(packed, conv_bias, filters, bias, project_stage)):
        if function(code, geometry, first, in_c, _address(x), addresses[0], addresses[1], conv_low, conv_high, addresses[2],
                    addresses[3], low, high, project_address, _address(out), _threads):
            raise NativeError("native float 1x1 + depthwise convolution failed")
        return out

    return call


def depthwise_f32_caller(isa_name: str, depth_multiplier: int, filters: np.ndarray, bias, low: float, high: float):
    """``depthwise_f32`` with the filters, bias and clamp bound once: call(geometry, x, out) -> out."""
    function, code = _library.edgeq_depthwise_f32, ISA_CODES[isa_name]
    filters_address = filters.ctypes.data
    bias_address = None if bias is None else bias.ctypes.data
    low, high = ctypes.c_float(low), ctypes.c_float(high)

    def call(geometry, x, out, _keep=(filters, bias)):
        if function(code, geometry, depth_multiplier, _address(x), filters_address, bias_address, low, high,
                    _address(out), _threads):
            raise NativeError("native float depthwise convolution failed")
        return out

    return call


def sgemm(isa_name: str, a: np.ndarray, packed: np.ndarray, n: int, bias, low: float, high: float,
          out: np.ndarray) -> np.ndarray:
    """out [m, n] = clamp(a [m, k] (float32, rows contiguous) . weights^T + bias, low, high); ``bias``
    None or padded (``SGEMM_BIAS_MULTIPLE``)."""
    m, k = a.shape
    status = _library.edgeq_sgemm(ISA_CODES[isa_name], m, k, n, a.ctypes.data, a.strides[0] // 4, packed.ctypes.data,
                                  None if bias is None else bias.ctypes.data, low, high, out.ctypes.data, _threads)
    if status:
        raise NativeError(f"native float GEMM failed ({status})")
    return out


# -- int8 SOFTMAX, MEAN and CONCATENATION (portable C: their cost is the Python around them) -----------

SOFTMAX_MAX_DEPTH = 4096  # past it the reference's int32 sum of exponentials may wrap


def softmax_int8(x: np.ndarray, exp_table: np.ndarray, sum_term_table: np.ndarray, out: np.ndarray) -> np.ndarray:
    """int8 SOFTMAX over the last axis of contiguous x into ``out`` (int8 or int16) through softmax.py's
    int32 tables of 256 entries."""
    depth = x.shape[-1] if x.ndim else 1
    _library.edgeq_softmax_int8(x.size // max(depth, 1), depth, _address(x), _address(exp_table),
                                _address(sum_term_table), 8 * out.itemsize, _address(out))
    return out


def mean_int8(isa_name: str, x: np.ndarray, outer: int, reduced: int, inner: int, zero_point_term: int,
              multiplier: int, shift: int, single_rounding: bool, output_zero_point: int, low: int, high: int,
              sums: np.ndarray, out: np.ndarray) -> np.ndarray:
    """int8 MEAN of contiguous x seen as [outer, reduced, inner] over its middle axis into ``out``;
    ``sums`` holds ``inner`` int32."""
    _library.edgeq_mean_int8(ISA_CODES[isa_name], outer, reduced, inner, _address(x), zero_point_term, multiplier, shift,
                             int(single_rounding), output_zero_point, low, high, _address(sums), _address(out))
    return out


class Concatenation:
    """Inputs side by side on one axis, a memcpy per slice: made in prepare with each input's bytes
    per outer index; ``__call__(outer, xs, out)`` copies contiguous ``xs`` into ``out``."""

    def __init__(self, widths):
        self.count = len(widths)
        self.widths = (ctypes.c_size_t * self.count)(*widths)
        self.pointers = (ctypes.c_void_p * self.count)()

    def __call__(self, outer: int, xs, out: np.ndarray) -> np.ndarray:
        pointers = self.pointers
        for k, x in enumerate(xs):
            pointers[k] = _address(x)
        _library.edgeq_concat(outer, self.count, pointers, self.widths, _address(out))
        return out
