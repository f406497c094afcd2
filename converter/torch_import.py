"""PyTorch in: a ``torch.nn.Module``, a ``torch.export.ExportedProgram``, a ``.pt2`` file saved with
``torch.export.save`` or a TorchScript ``.pt`` file becomes an ONNX model in memory, which the ONNX
importer then takes as it takes any other.

The export uses the settings the importer is tested with: the TorchScript-based exporter
(``dynamo=False``), opset 17, constant folding, the module in eval mode. The example inputs fix every
dimension, so the ONNX model has no dynamic ones. torch is imported only here, and only when a PyTorch
model is given (``pip install "edgeq[torch]"``).
"""
from __future__ import annotations

import inspect
import io
import os
import warnings
from pathlib import Path
from typing import Optional

import numpy as np

from edgeq.runtime.ir import ModelError

ONNX_OPSET = 17
TORCH_FILE_SUFFIXES = (".pt2", ".pt", ".pth")


def is_torch_source(model) -> bool:
    """A PyTorch model object, or the name of a .pt2 / TorchScript file; torch is not imported."""
    if isinstance(model, (str, os.PathLike)):
        return Path(model).suffix.lower() in TORCH_FILE_SUFFIXES
    return any(cls.__module__.split(".")[0] == "torch" for cls in type(model).__mro__)


def _import_torch():
    try:
        import torch
    except ImportError:
        raise ModelError('converting a PyTorch model needs torch: pip install "edgeq[torch]"') from None
    return torch


def torch_to_onnx(model, example_inputs=None, input_shapes: Optional[dict] = None):
    """The ONNX model (an ``onnx.ModelProto``) of a PyTorch model object or file.

    ``example_inputs``: a tuple of tensors or arrays the model is called with; without it, zeros of the
    ``input_shapes`` given (``{name: shape}``, in input order), else an ExportedProgram's own example
    inputs.
    """
    import onnx

    torch = _import_torch()
    label = str(model) if isinstance(model, (str, os.PathLike)) else type(model).__name__
    module, stored_inputs = _as_module(torch, model)
    names = _input_names(module)
    if example_inputs is not None:
        arguments = tuple(_as_tensor(torch, x) for x in (example_inputs if isinstance(example_inputs, (tuple, list))
                                                          else (example_inputs,)))
    elif input_shapes:
        arguments = tuple(torch.zeros(tuple(shape)) for shape in input_shapes.values())
        names = list(input_shapes)
    elif stored_inputs is not None:
        arguments = stored_inputs
    else:
        raise ModelError(f"{label}: a PyTorch model needs example_inputs=(x,) (or --input-shape NAME:D1,D2,...) "
                         "to be exported")
    names = _unique_names(names, len(arguments))
    with torch.no_grad():
        outputs = module(*arguments)
    buffer = io.BytesIO()
    try:
        with warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore")
            torch.onnx.export(module, arguments, buffer, dynamo=False, opset_version=ONNX_OPSET,
                              input_names=names, output_names=_output_names(outputs),
                              do_constant_folding=True)
    except Exception as error:  # the exporter raises many types; the user needs its message
        raise ModelError(f"{label}: PyTorch's ONNX export failed: {type(error).__name__}: {error}") from None
    return onnx.load_from_string(buffer.getvalue())


def _as_module(torch, model) -> tuple:
    """(a callable module in eval mode, the example inputs stored with it or None)."""
    if isinstance(model, (str, os.PathLike)):
        path = Path(model)
        if not path.is_file():
            raise ModelError(f"{path}: no such file")
        try:
            if path.suffix.lower() == ".pt2":
                model = torch.export.load(str(path))
            else:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore", DeprecationWarning)  # TorchScript is deprecated, still loads
                    model = torch.jit.load(str(path), map_location="cpu")
        except Exception as error:
            kind = "a torch.export .pt2" if path.suffix.lower() == ".pt2" else "a TorchScript"
            raise ModelError(f"{path}: not {kind} file ({type(error).__name__}: {error})") from None
    if isinstance(model, torch.export.ExportedProgram):
        stored = getattr(model, "example_inputs", None)
        arguments = tuple(stored[0]) if stored and not stored[1] else None
        module = model.module()
        # The exporter switches the module to eval mode and back; an exported program's module is
        # already in the mode it was exported in and refuses train(), so the switch is made a no-op.
        module.train = lambda mode=True: module
        return module, arguments
    if not isinstance(model, torch.nn.Module):
        raise ModelError(f"{type(model).__name__} is not a torch.nn.Module or torch.export.ExportedProgram")
    model.eval()
    return model, None


def _as_tensor(torch, value):
    if isinstance(value, torch.Tensor):
        return value.detach().cpu()
    return torch.from_numpy(np.ascontiguousarray(value))


def _input_names(module) -> list:
    """The names of forward's positional parameters: the ONNX (and .tflite) input names."""
    try:
        parameters = inspect.signature(module.forward).parameters.values()
    except (TypeError, ValueError):
        return []
    return [p.name for p in parameters if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]


def _unique_names(names: list, count: int) -> list:
    if len(names) >= count and len(set(names[:count])) == count:
        return list(names[:count])
    return ["input"] if count == 1 else [f"input_{i}" for i in range(count)]


def _output_names(outputs) -> Optional[list]:
    """``output`` for one tensor, the keys of a dict of tensors, ``output_i`` for a tuple of tensors; else
    the exporter's own names."""
    if hasattr(outputs, "shape"):
        return ["output"]
    if isinstance(outputs, dict) and all(hasattr(v, "shape") for v in outputs.values()):
        return [str(k) for k in outputs]
    if isinstance(outputs, (tuple, list)) and all(hasattr(v, "shape") for v in outputs):
        return [f"output_{i}" for i in range(len(outputs))]
    return None
