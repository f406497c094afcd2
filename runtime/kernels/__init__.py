"""Kernels, one module per op family, all registered in ``REGISTRY``.

Every kernel is split as TFLite Micro splits it: ``prepare(op, graph)`` runs once per model and
computes everything static (weight layouts, requantization multipliers, index arrays); it returns
``eval(*inputs)``, the hot path, which receives the op's input arrays in order (``None`` for an
omitted optional input) and returns the output array, or a tuple of arrays for multi-output ops.
A kernel module handles every dtype of its ops; ``prepare`` picks the float or integer path.
"""
from __future__ import annotations

from edgeq.runtime.registry import registrar

REGISTRY: dict = {}
# Custom ops (type "CUSTOM") are told apart by their custom code: custom code -> prepare.
CUSTOM_REGISTRY: dict = {}
# op type -> check(op, graph): what a kernel cannot run, refused by the validator at load (see ``check``).
CHECKS: dict = {}


# ``@register("ADD", "SUB")`` on a ``prepare(op, graph)`` function.
register = registrar(REGISTRY, "kernel")
# ``@register_custom("Convolution2DTransposeBias")`` on a custom op's ``prepare``.
register_custom = registrar(CUSTOM_REGISTRY, "kernel for custom op")
# ``@check("CONV_2D")`` on a ``check(op, graph)`` declared next to the kernel, raising ModelError (saying why,
# without naming the op: the validator names it) for an op that the kernel's prepare cannot handle.
# ``validate_graph`` calls it when a model is loaded, so a bad file is refused there, before anything is
# allocated, and prepare may take it as given.
check = registrar(CHECKS, "check")


def has_kernel(op) -> bool:
    """Whether a kernel runs ``op`` (for a custom op: one registered for its custom code)."""
    if op.type == "CUSTOM":
        return op.options.get("custom_code") in CUSTOM_REGISTRY
    return op.type in REGISTRY


KERNEL_MODULES = (
    "activations",
    "argminmax",
    "batch_matmul",
    "comparison",
    "conv",
    "cumsum",
    "custom",
    "depthwise_conv",
    "elementwise",
    "floor_mod",
    "fully_connected",
    "normalization",
    "pooling",
    "quantize_ops",
    "reduce",
    "resize",
    "shape_ops",
    "softmax",
    "transpose_conv",
)


def load_all_kernels() -> dict:
    """Import every kernel module (each registers its ops) and return ``REGISTRY``."""
    import importlib

    for module in KERNEL_MODULES:
        importlib.import_module(f"{__name__}.{module}")
    return REGISTRY
