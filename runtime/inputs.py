"""The one loader of user arrays: .npy / .npz files and images, for ``edgeq run`` and ``edgeq bench``,
calibration and the report's eval set.

Two shapes of use:

* samples for a graph (``load_samples``, ``samples_for_graph``): ``{input name: array}`` with samples on
  the first axis, in the graph's layout; images may come NCHW (as an ONNX model takes them) or NHWC.
* feeds for one inference of an interpreter (``load_inputs``): one array per input detail, of its exact
  shape and type; an image file is read (Pillow, optional), resized, normalized and quantized for it.

Every problem with the user's file is a ``ModelError`` that names the file and the input.
"""
from __future__ import annotations

from pathlib import Path
from typing import Optional, Union

import numpy as np

from edgeq.runtime.fixedpoint import round_half_away
from edgeq.runtime.ir import Graph, ModelError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff")
IMAGE_LAYOUTS = ("auto", "nhwc", "nchw")


# -- reading files ---------------------------------------------------------------------------

def is_image(path) -> bool:
    return Path(path).suffix.lower() in IMAGE_SUFFIXES


def read_arrays(path, what: str) -> Union[np.ndarray, dict]:
    """The array of an .npy file, or ``{key: array}`` of an .npz file, read whole; never unpickles.
    ``what`` says in messages what the file is for: "calibration", "eval", "input"."""
    path = Path(path)
    if not path.is_file():
        raise ModelError(f"{what} file {path} does not exist")
    if path.stat().st_size == 0:
        raise ModelError(f"{what} file {path} is empty")
    try:
        loaded = np.load(path, allow_pickle=False)
        if isinstance(loaded, np.ndarray):
            return loaded
        with loaded:
            return {key: loaded[key] for key in loaded.files}
    except ValueError as error:
        if "pickle" in str(error).lower():
            raise ModelError(
                f"{what} file {path} contains pickled objects, which are refused for safety; "
                "save plain numeric arrays (np.savez / np.save)"
            ) from None
        raise ModelError(f"{what} file {path} is not a numpy .npy/.npz file: {error}") from None
    except (OSError, EOFError) as error:
        raise ModelError(f"{what} file {path} cannot be read as .npy/.npz: {error}") from None


# -- samples for a graph (calibration, eval) -------------------------------------------------

def load_samples(path, graph: Graph, what: str = "calibration", nchw_to_nhwc: Optional[bool] = None,
                 num_samples: Optional[int] = None) -> dict:
    """Samples as ``{input name: array}`` in the graph's layout, first axis = samples.

    ``path``: an ``.npz`` with one array per graph input (key = input name), or an ``.npy`` for a
    one-input graph. Image samples may be NCHW (as the ONNX model takes them) or NHWC; the layout is
    read from the shape unless ``nchw_to_nhwc`` says it. ``num_samples`` keeps the first N samples.
    """
    return samples_for_graph(read_arrays(path, what), graph, path, what, nchw_to_nhwc, num_samples)


def samples_for_graph(arrays: Union[np.ndarray, dict], graph: Graph, source, what: str = "calibration",
                      nchw_to_nhwc: Optional[bool] = None, num_samples: Optional[int] = None) -> dict:
    """``load_samples`` on arrays already read (``read_arrays``' result); ``source`` names their file."""
    if isinstance(arrays, np.ndarray):
        if len(graph.inputs) != 1:
            raise ModelError(
                f"{what} file {source} holds one array but the model has inputs {graph.inputs}; "
                "use an .npz with one array per input name"
            )
        arrays = {graph.inputs[0]: arrays}
    unknown = sorted(set(arrays) - set(graph.inputs))
    missing = [n for n in graph.inputs if n not in arrays]
    if unknown or missing:
        raise ModelError(
            f"{what} file {source}: arrays must be named after the model inputs {graph.inputs}; "
            f"missing {missing}, unexpected {unknown}"
        )
    samples = {}
    counts = set()
    for name in graph.inputs:
        data = arrays[name]
        if data.dtype.kind not in "fiub":
            raise ModelError(f"{what} input '{name}' has non-numeric dtype {data.dtype}")
        if data.ndim == 0 or data.shape[0] == 0:
            raise ModelError(f"{what} input '{name}' holds no samples")
        if data.dtype.kind == "f" and not np.all(np.isfinite(data)):
            raise ModelError(f"{what} input '{name}' contains NaN or Inf")
        data = _to_graph_layout(name, data, graph, nchw_to_nhwc, what)
        samples[name] = np.ascontiguousarray(data, dtype=graph[name].dtype)
        counts.add(data.shape[0])
    if len(counts) > 1:
        raise ModelError(f"{what} inputs have different numbers of samples: {sorted(counts)}")
    available = counts.pop()
    if num_samples is not None:
        if num_samples > available:
            raise ModelError(f"asked for {num_samples} {what} samples but {source} holds only {available}")
        samples = {name: data[:num_samples] for name, data in samples.items()}
    return samples


def _to_graph_layout(name: str, data: np.ndarray, graph: Graph, nchw_to_nhwc: Optional[bool],
                     what: str) -> np.ndarray:
    """Samples in the graph's (NHWC) layout; channels-first samples are transposed."""
    expected = tuple(graph[name].shape[1:])
    given = tuple(data.shape[1:])
    channels_first = (expected[-1],) + expected[:-1] if len(expected) >= 2 else expected
    matches_nhwc = given == expected
    matches_nchw = len(expected) >= 2 and given == channels_first
    if nchw_to_nhwc is None:
        if matches_nhwc and matches_nchw and expected[-1] > 1:
            raise ModelError(
                f"{what} input '{name}': shape {given} reads as NCHW and as NHWC; "
                "say which with nchw_to_nhwc=True/False"
            )
        nchw_to_nhwc = matches_nchw and not matches_nhwc
    if nchw_to_nhwc:
        if not matches_nchw:
            raise ModelError(f"{what} input '{name}': samples of shape {given} are not NCHW {channels_first}")
        return np.moveaxis(data, 1, -1)
    if not matches_nhwc:
        layouts = f"{expected} (NHWC)" + (f" or {channels_first} (NCHW)" if len(expected) >= 2 else "")
        raise ModelError(f"{what} input '{name}': samples have shape {given}, expected {layouts}")
    return data


# -- feeds for one inference (run, bench) ----------------------------------------------------

def load_inputs(path, details: list, mean: Optional[str] = None, std: Optional[str] = None,
                layout: str = "auto") -> list:
    """One array per input detail (``get_input_details()`` of ours or LiteRT's interpreter), in order.

    ``path``: an .npy for a one-input model, an .npz keyed by input name (or holding one array for a
    one-input model), or an image file for a one-input 4-D model. An array may leave out the batch
    axis, and may be NCHW for an NHWC input. ``mean``/``std`` (``"0.5"`` or ``"0.485,0.456,0.406"``)
    and ``layout`` apply to images alone.
    """
    if is_image(path):
        return [image_input(path, details, mean, std, layout)]
    if mean or std or layout != "auto":
        raise ModelError("--mean, --std and --layout apply to image inputs; give an image file to --input")
    loaded = read_arrays(path, "input")
    if isinstance(loaded, np.ndarray):
        if len(details) != 1:
            names = ", ".join(d["name"] for d in details)
            raise ModelError(f"{path}: the model has {len(details)} inputs ({names}); give an .npz keyed by name")
        arrays = [loaded]
    else:
        missing = [d["name"] for d in details if d["name"] not in loaded]
        if missing and len(details) == 1 and len(loaded) == 1:
            arrays = list(loaded.values())
        elif missing:
            raise ModelError(f"{path}: no array for input(s) {', '.join(missing)} (has {', '.join(loaded)})")
        else:
            arrays = [loaded[d["name"]] for d in details]
    return [_fit_input(a, d, path) for a, d in zip(arrays, details)]


def _fit_input(array: np.ndarray, detail: dict, path) -> np.ndarray:
    shape = tuple(int(d) for d in detail["shape"])
    if array.shape != shape and array.size == int(np.prod(shape)) and array.ndim == len(shape) - 1:
        array = array.reshape(shape)
    if array.shape != shape:
        # an NCHW image for an NHWC model input is the common case
        if array.ndim == len(shape) == 4 and array.shape == (shape[0], shape[3], shape[1], shape[2]):
            array = array.transpose(0, 2, 3, 1)
        else:
            raise ModelError(f"{path}: input '{detail['name']}' has shape {list(array.shape)}, the model wants {list(shape)}")
    if not np.issubdtype(array.dtype, np.dtype(detail["dtype"])):
        if np.dtype(detail["dtype"]).kind == "f":
            array = array.astype(detail["dtype"])
        else:
            raise ModelError(f"{path}: input '{detail['name']}' is {array.dtype}, the model wants {np.dtype(detail['dtype']).name}")
    return np.ascontiguousarray(array)


# -- images ----------------------------------------------------------------------------------

def image_input(path, details: list, mean: Optional[str] = None, std: Optional[str] = None,
                layout: str = "auto") -> np.ndarray:
    """An image as the one input of ``details``: converted to its channels (grey or RGB), resized to
    its height and width (bilinear), scaled to [0, 1], normalized per channel, quantized for integer
    inputs; batch of 1."""
    if not Path(path).is_file():
        raise ModelError(f"{path}: no such file")
    if len(details) != 1:
        raise ModelError(f"{path}: an image feeds one input, the model has {len(details)}; give an .npz")
    detail = details[0]
    shape = tuple(int(d) for d in detail["shape"])
    layout = image_layout(shape, layout)
    height, width, channels = shape[1:4] if layout == "nhwc" else (shape[2], shape[3], shape[1])
    if channels not in (1, 3):
        raise ModelError(f"input shape {list(shape)} read as {layout.upper()} has {channels} channels; "
                         "images give 1 or 3")
    pixels = read_image(path, channels, height, width)
    pixels = (pixels - channel_values(mean, channels, "--mean", 0.0)) / channel_values(std, channels, "--std", 1.0)
    batch = pixels[None] if layout == "nhwc" else pixels.transpose(2, 0, 1)[None]
    if shape[0] != 1:
        raise ModelError(f"input shape {list(shape)}: an image fills a batch of 1")
    return np.ascontiguousarray(as_input_dtype(batch, detail))


def image_layout(shape: tuple, layout: str) -> str:
    """The input's layout: as told, or NHWC when the last axis holds 1 or 3 channels, else NCHW."""
    if len(shape) != 4:
        raise ModelError(f"an image needs a 4-D model input; this one has shape {list(shape)}")
    if layout != "auto":
        return layout
    if shape[3] in (1, 3):
        return "nhwc"
    if shape[1] in (1, 3):
        return "nchw"
    raise ModelError(f"input shape {list(shape)} has no 1- or 3-channel axis; say --layout nhwc or nchw")


def channel_values(text: Optional[str], channels: int, option: str, default: float) -> np.ndarray:
    """``"0.5"`` or ``"0.485,0.456,0.406"`` as one float32 per channel; ``default`` when not given."""
    if not text:
        return np.full(channels, default, np.float32)
    try:
        values = [float(v) for v in text.split(",")]
    except ValueError:
        raise ModelError(f"{option} '{text}': expected a number or a comma list, one per channel") from None
    if len(values) not in (1, channels):
        raise ModelError(f"{option} '{text}': {len(values)} values for {channels} channel(s)")
    if option == "--std" and any(v == 0 for v in values):
        raise ModelError(f"{option} '{text}': a standard deviation of 0")
    return np.broadcast_to(np.array(values, np.float32), (channels,))


def read_image(path, channels: int, height: int, width: int) -> np.ndarray:
    """H x W x C float32 pixels in [0, 1]."""
    try:
        from PIL import Image, UnidentifiedImageError
    except ImportError:
        raise ModelError("reading images needs Pillow: pip install 'edgeq[images]' (or pip install Pillow)") from None
    try:
        with Image.open(path) as image:
            image = image.convert("L" if channels == 1 else "RGB").resize((width, height), Image.BILINEAR)
            pixels = np.asarray(image, dtype=np.float32) / 255.0
    except (UnidentifiedImageError, OSError, ValueError) as exc:
        raise ModelError(f"{path}: not a readable image ({exc})") from None
    return pixels[..., None] if pixels.ndim == 2 else pixels


def as_input_dtype(values: np.ndarray, detail: dict) -> np.ndarray:
    """Float values in the input's type: quantized with its scale and zero point for integer inputs."""
    dtype = np.dtype(detail["dtype"])
    if dtype.kind == "f":
        return values.astype(dtype)
    scale, zero_point = detail["quantization"]
    if not scale:
        raise ModelError(f"input '{detail['name']}' is {dtype.name} without quantization parameters")
    info = np.iinfo(dtype)
    # As TFLite's QUANTIZE rounds: ties away from zero.
    quantized = round_half_away(np.asarray(values, np.float32) / np.float32(scale)) + zero_point
    return np.clip(quantized, info.min, info.max).astype(dtype)
