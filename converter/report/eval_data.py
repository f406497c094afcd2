"""The report's eval set and the user's own metric.

The eval file's input arrays go through the runtime's one loader of user arrays
(``edgeq.runtime.inputs``), as calibration samples do; its other arrays (labels, anything a user metric
wants) are kept as stored.
"""
from __future__ import annotations

import importlib
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

import numpy as np

from edgeq.runtime.inputs import ImageFolder, read_arrays, samples_for_graph
from edgeq.runtime.ir import ModelError


@dataclass
class EvalData:
    inputs: dict            # input name -> samples in the graph's layout, first axis = samples
    labels: Optional[np.ndarray]
    raw: dict               # every array of the eval file, as stored (handed to a user metric)
    count: int


def load_eval(path, graph, labels_key: Optional[str] = None, num_samples: Optional[int] = None) -> EvalData:
    """The eval .npz: the model's input key(s), NCHW or NHWC images, and optional labels (an .npy
    holds the input of a one-input model alone).

    ``labels_key`` None uses ``y`` when present; a key that was asked for and is absent is an error.
    The input arrays are checked and laid out as calibration samples are (``samples_for_graph``).
    ``path`` may also be a folder of images with one subfolder per class (or its ``ImageFolder``), see
    ``load_eval_folder``.
    """
    if isinstance(path, (str, os.PathLike)) and Path(path).is_dir():
        path = ImageFolder(str(path))
    if isinstance(path, ImageFolder):
        return load_eval_folder(path, graph, labels_key, num_samples)
    raw = read_arrays(path, "eval")
    if isinstance(raw, np.ndarray):
        if len(graph.inputs) != 1:
            raise ModelError(f"eval file {path} holds one array but the model has inputs {graph.inputs}; "
                             "use an .npz with one array per input name")
        raw = {graph.inputs[0]: raw}
    if labels_key is not None and labels_key not in raw:
        raise ModelError(f"eval file {path} has no labels array '{labels_key}' (has {', '.join(raw)})")
    if labels_key is None and "y" in raw and "y" not in graph.inputs:
        labels_key = "y"
    if num_samples is not None:
        raw = {key: value[:num_samples] for key, value in raw.items()}
    missing = [name for name in graph.inputs if name not in raw]
    others = [key for key in raw if key != labels_key]
    if len(graph.inputs) == 1 and missing and len(others) == 1:  # {x, y}: x is the one input, whatever its name
        inputs = samples_for_graph({graph.inputs[0]: raw[others[0]]}, graph, path, "eval")
        missing = []
    else:
        inputs = None
    if missing:
        raise ModelError(f"eval file {path}: no array for model input(s) {', '.join(missing)} (has {', '.join(raw)})")
    if inputs is None:
        inputs = samples_for_graph({name: raw[name] for name in graph.inputs}, graph, path, "eval")
    count = next(iter(inputs.values())).shape[0]
    labels = None
    if labels_key is not None:
        labels = np.asarray(raw[labels_key])
        if labels.ndim == 2:  # one-hot
            labels = np.argmax(labels, axis=1)
        if labels.ndim != 1 or labels.shape[0] != count or labels.dtype.kind not in "iub":
            raise ModelError(f"eval file {path}: labels '{labels_key}' must be {count} integer classes, "
                             f"got {labels.dtype} {list(labels.shape)}")
    return EvalData(inputs=inputs, labels=labels, raw=raw, count=count)


def load_eval_folder(folder: ImageFolder, graph, labels_key: Optional[str] = None,
                     num_samples: Optional[int] = None) -> EvalData:
    """A folder of images with one subfolder per class: the images as the model's input, read as
    ``folder`` says, and their classes as labels ``y`` (numbered by ``labels.txt`` when the folder has
    one, else by the sorted subfolder names)."""
    if labels_key not in (None, "y"):
        raise ModelError(f"--labels-key {labels_key}: the labels of an image folder are its class subfolders")
    paths, labels, _ = folder.labelled_images("eval")
    paths, labels = paths[:num_samples], labels[:num_samples]
    arrays = folder.samples(graph, "eval", paths=paths)
    inputs = samples_for_graph(arrays, graph, folder.path, "eval", False)
    return EvalData(inputs=inputs, labels=labels, raw={**inputs, "y": labels}, count=len(paths))


def load_metric(spec: str) -> Callable:
    """``module:function`` imported by name from sys.path and the current folder (runs the user's code)."""
    module_name, sep, function_name = spec.partition(":")
    if not sep or not module_name or not function_name:
        raise ModelError(f"--metric '{spec}': expected MODULE:FUNCTION, e.g. my_metrics:mean_iou")
    cwd = os.getcwd()
    added = cwd not in sys.path
    if added:
        sys.path.insert(0, cwd)
    try:
        module = importlib.import_module(module_name)
    except Exception as error:
        raise ModelError(f"--metric '{spec}': cannot import {module_name}: {type(error).__name__}: {error}") from None
    finally:
        if added:
            sys.path.remove(cwd)
    function = getattr(module, function_name, None)
    if not callable(function):
        raise ModelError(f"--metric '{spec}': {module_name} has no function {function_name}")
    return function


def call_metric(metric: Callable, spec: str, outputs: list, raw: dict) -> dict:
    try:
        values = metric(outputs, raw)
    except Exception as error:
        raise ModelError(f"--metric '{spec}' failed: {type(error).__name__}: {error}") from None
    if not isinstance(values, dict) or not values:
        raise ModelError(f"--metric '{spec}' must return a non-empty dict of named numbers, got {type(values).__name__}")
    try:
        return {str(k): float(v) for k, v in values.items()}
    except (TypeError, ValueError):
        raise ModelError(f"--metric '{spec}' returned a value that is not a number: {values!r}") from None
