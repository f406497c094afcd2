"""The one loader of user arrays: .npy / .npz files and images, for ``edgeq run`` and ``edgeq bench``,
calibration and the report's eval set.

Two shapes of use:

* samples for a graph (``load_samples``, ``samples_for_graph``): ``{input name: array}`` with samples on
  the first axis, in the graph's layout; images may come NCHW (as an ONNX model takes them) or NHWC.
  They come as users hold them: an .npz/.npy file, arrays, a folder of images (``ImageFolder``), an
  iterable or generator of samples (as TFLite's ``representative_dataset``), or a reader whose
  ``get_next()`` returns input dicts until ``None`` (as onnxruntime's ``CalibrationDataReader``).
* feeds for one inference of an interpreter (``load_inputs``): one array per input detail, of its exact
  shape and type; an image file is read (Pillow, optional), resized, normalized and quantized for it.

Every problem with the user's file is a ``ModelError`` that names the file and the input.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence, Union

import numpy as np

from edgeq.runtime.fixedpoint import round_half_away
from edgeq.runtime.ir import Graph, ModelError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff")
IMAGE_LAYOUTS = ("auto", "nhwc", "nchw")


# -- reading files ---------------------------------------------------------------------------

def is_image(path) -> bool:
    return Path(path).suffix.lower() in IMAGE_SUFFIXES


NPY_MAGIC, NPZ_MAGIC = b"\x93NUMPY", b"PK\x03\x04"


def read_arrays(path, what: str) -> Union[np.ndarray, dict]:
    """The array of an .npy file, or ``{key: array}`` of an .npz file, read whole; never unpickles.
    ``what`` says in messages what the file is for: "calibration", "eval", "input"."""
    path = Path(path)
    if not path.is_file():
        raise ModelError(f"{what} file {path} does not exist")
    if path.stat().st_size == 0:
        raise ModelError(f"{what} file {path} is empty")
    with open(path, "rb") as f:
        magic = f.read(6)
    if not magic.startswith((NPY_MAGIC, NPZ_MAGIC)):
        # numpy takes any other file for a pickle and advises loading it unsafely: say what it is instead
        kind = "a Python pickle, which is refused for safety" if magic[:1] == b"\x80" else "not a numpy .npy/.npz file"
        raise ModelError(f"{what} file {path} is {kind}; save plain numeric arrays with np.save / np.savez")
    try:
        loaded = np.load(path, allow_pickle=False)
        if isinstance(loaded, np.ndarray):
            return loaded
        with loaded:
            return {key: loaded[key] for key in loaded.files}
    except ValueError as error:
        if "pickle" in str(error).lower():
            raise ModelError(
                f"{what} file {path} holds object arrays (pickled objects), which are refused for safety; "
                "save plain numeric arrays (np.savez / np.save)"
            ) from None
        raise ModelError(f"{what} file {path} is a damaged .npy/.npz file: {error}") from None
    except (OSError, EOFError) as error:
        raise ModelError(f"{what} file {path} cannot be read as .npy/.npz: {error}") from None


# -- samples for a graph (calibration, eval) -------------------------------------------------

class GraphSamples(dict):
    """``{input name: array}`` already in a graph's layout (``load_samples``' result): loading it again
    keeps it as it is, so samples from a one-shot source can be read once and used at every stage."""


def load_samples(source, graph: Graph, what: str = "calibration", nchw_to_nhwc: Optional[bool] = None,
                 num_samples: Optional[int] = None) -> dict:
    """Samples as ``{input name: array}`` in the graph's layout, first axis = samples.

    ``source``: an ``.npz`` with one array per graph input (key = input name), or an ``.npy`` for a
    one-input graph; a folder of images (or an ``ImageFolder`` that says how to read them); such
    arrays themselves (an array, or a dict keyed by input name); an iterable or generator of samples,
    each an array (one-input graph), a list of arrays in input order, or a dict keyed by input name,
    with or without a batch axis; or an object whose ``get_next()`` returns such dicts until ``None``.
    Image samples may be NCHW (as the ONNX model takes them) or NHWC; the layout is read from the shape
    unless ``nchw_to_nhwc`` says it. ``num_samples`` keeps the first N samples (and reads no further).
    """
    if isinstance(source, GraphSamples):
        return source if num_samples is None else GraphSamples({k: v[:num_samples] for k, v in source.items()})
    if isinstance(source, (str, os.PathLike)) and Path(source).is_dir():
        source = ImageFolder(str(source))
    if isinstance(source, ImageFolder):
        arrays = source.samples(graph, what, num_samples)
        return GraphSamples(samples_for_graph(arrays, graph, source.path, what, False, num_samples))
    if isinstance(source, (str, os.PathLike)):
        arrays, label = read_arrays(source, what), source
    elif isinstance(source, (np.ndarray, dict)):
        arrays, label = source, "(arrays)"
    else:
        arrays, label = collect_samples(source, graph, what, num_samples), f"({type(source).__name__})"
    return GraphSamples(samples_for_graph(arrays, graph, label, what, nchw_to_nhwc, num_samples))


def _iterate_samples(source, what: str):
    """The samples of an iterable, or of a reader's ``get_next()`` until it returns None."""
    if callable(getattr(source, "get_next", None)):
        while True:
            sample = source.get_next()
            if sample is None:
                return
            yield sample
    elif isinstance(source, (bytes, bytearray)) or not hasattr(source, "__iter__"):
        raise ModelError(f"{what} samples: expected a file, a folder of images, arrays, an iterable of samples "
                         f"or an object with get_next(); got {type(source).__name__}")
    else:
        yield from source


def collect_samples(source, graph: Graph, what: str = "calibration", num_samples: Optional[int] = None) -> dict:
    """The samples of an iterable or reader stacked as ``{input name: array}`` (in the samples' own layout),
    reading no more than ``num_samples`` when given."""
    chunks = {name: [] for name in graph.inputs}
    count = 0
    for index, sample in enumerate(_iterate_samples(source, what)):
        if num_samples is not None and count >= num_samples:
            break
        arrays = _sample_arrays(sample, graph, what, index)
        sizes = set()
        for name, array in arrays.items():
            rank = len(graph[name].shape)
            if array.ndim == rank - 1:
                array = array[None]
            elif array.ndim != rank:
                raise ModelError(f"{what} sample {index}: input '{name}' has shape {list(array.shape)}; the model's "
                                 f"input is {rank}-D (a batch axis first, or none for one sample)")
            chunks[name].append(array)
            sizes.add(array.shape[0])
        if len(sizes) > 1:
            raise ModelError(f"{what} sample {index}: inputs have different batch sizes {sorted(sizes)}")
        count += sizes.pop()
    if count == 0:
        raise ModelError(f"{what} samples: the {type(source).__name__} gave no samples")
    try:
        return {name: np.concatenate(parts) for name, parts in chunks.items()}
    except ValueError as error:
        raise ModelError(f"{what} samples differ in shape: {error}") from None


def _sample_arrays(sample, graph: Graph, what: str, index: int) -> dict:
    """One sample as ``{input name: array}``: from a dict keyed by input name, a list or tuple of arrays in
    input order, or a lone array for a one-input graph."""
    if isinstance(sample, dict):
        unknown = sorted(set(sample) - set(graph.inputs))
        missing = [name for name in graph.inputs if name not in sample]
        if unknown or missing:
            raise ModelError(f"{what} sample {index}: keys must be the model inputs {graph.inputs}; "
                             f"missing {missing}, unexpected {unknown}")
        values = [sample[name] for name in graph.inputs]
    elif isinstance(sample, (list, tuple)):
        if len(sample) != len(graph.inputs):
            raise ModelError(f"{what} sample {index}: {len(sample)} arrays for the model's "
                             f"{len(graph.inputs)} inputs {graph.inputs}")
        values = list(sample)
    elif len(graph.inputs) == 1:
        values = [sample]
    else:
        raise ModelError(f"{what} sample {index}: the model has inputs {graph.inputs}; give a dict keyed by "
                         "input name or a list of arrays in that order")
    arrays = {}
    for name, value in zip(graph.inputs, values):
        try:
            arrays[name] = np.asarray(value)
        except (TypeError, ValueError, RuntimeError) as error:
            raise ModelError(f"{what} sample {index}: input '{name}' is not an array: {error}") from None
    return arrays


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


def read_image(path, channels: int, height: int, width: int, shorter_side: Optional[int] = None) -> np.ndarray:
    """H x W x C float32 pixels in [0, 1]: resized to height x width (bilinear); with ``shorter_side``,
    resized so that its shorter side is that long, then its centre cropped to height x width."""
    try:
        from PIL import Image, UnidentifiedImageError
    except ImportError:
        raise ModelError("reading images needs Pillow: pip install 'edgeq[images]' (or pip install Pillow)") from None
    try:
        with Image.open(path) as image:
            image = image.convert("L" if channels == 1 else "RGB")
            if shorter_side is None:
                image = image.resize((width, height), Image.BILINEAR)
            else:
                image = _resize_and_crop(image, shorter_side, height, width, path)
            pixels = np.asarray(image, dtype=np.float32) / 255.0
    except (UnidentifiedImageError, OSError, ValueError) as exc:
        raise ModelError(f"{path}: not a readable image ({exc})") from None
    return pixels[..., None] if pixels.ndim == 2 else pixels


def _resize_and_crop(image, shorter_side: int, height: int, width: int, path):
    """As ImageNet evaluation prepares an image: shorter side resized to ``shorter_side`` (aspect kept),
    then the centre ``height`` x ``width`` cut out."""
    from PIL import Image

    scale = shorter_side / min(image.size)
    resized_width, resized_height = (max(1, round(side * scale)) for side in image.size)
    if resized_width < width or resized_height < height:
        raise ModelError(f"{path}: --size {shorter_side} makes it {resized_width}x{resized_height}, smaller than "
                         f"the model's {width}x{height} input")
    image = image.resize((resized_width, resized_height), Image.BILINEAR)
    left = int(round((resized_width - width) / 2.0))
    top = int(round((resized_height - height) / 2.0))
    return image.crop((left, top, left + width, top + height))


LABELS_FILE = "labels.txt"


@dataclass(frozen=True)
class ImageFolder:
    """A folder of images as the samples of a one-input image model.

    Images are found in the folder and its subfolders, in sorted path order. Each is converted to the
    input's channels (grey or RGB) and resized to its height and width (with ``size``: its shorter side
    resized to ``size``, then its centre cropped to the input's size, as ImageNet evaluation does),
    scaled to [0, 1], normalized per channel with ``mean`` and ``std`` (a number, a comma list such as
    ``"0.485,0.456,0.406"``, or a sequence), and laid out as the model's input: ``layout`` "nhwc" or
    "nchw", or "auto" to read it from the input's shape.

    As eval data, each subfolder is a class: ``labels.txt`` in the folder names the classes in the
    model's output order, one per line; without it, the sorted subfolder names are the classes.
    """

    path: str
    size: Optional[int] = None
    mean: Union[str, Sequence, None] = None
    std: Union[str, Sequence, None] = None
    layout: str = "auto"

    def __str__(self) -> str:
        return self.path

    def image_paths(self, what: str = "calibration") -> list:
        folder = Path(self.path)
        if not folder.is_dir():
            raise ModelError(f"{what} folder {folder} does not exist")
        paths = sorted(p for p in folder.rglob("*") if p.is_file() and is_image(p))
        if not paths:
            raise ModelError(f"{what} folder {folder} holds no images ({', '.join(IMAGE_SUFFIXES)})")
        return paths

    def samples(self, graph: Graph, what: str = "calibration", num_samples: Optional[int] = None,
                paths: Optional[list] = None) -> dict:
        """``{input name: array}`` of the folder's images (the first ``num_samples``), in the input's layout."""
        if len(graph.inputs) != 1:
            raise ModelError(f"{what} folder {self.path}: images feed one input; the model has {graph.inputs}")
        if self.layout not in IMAGE_LAYOUTS:
            raise ModelError(f"layout {self.layout!r}: choose one of {', '.join(IMAGE_LAYOUTS)}")
        name = graph.inputs[0]
        shape = tuple(graph[name].shape)
        layout = image_layout(shape, self.layout)
        height, width, channels = shape[1:4] if layout == "nhwc" else (shape[2], shape[3], shape[1])
        if channels not in (1, 3):
            raise ModelError(f"input '{name}' of shape {list(shape)} read as {layout.upper()} has {channels} "
                             "channels; images give 1 or 3 (say --layout nhwc or nchw)")
        mean = channel_values(_as_text(self.mean), channels, "--mean", 0.0)
        std = channel_values(_as_text(self.std), channels, "--std", 1.0)
        paths = (paths or self.image_paths(what))[:num_samples]
        pixels = np.stack([(read_image(p, channels, height, width, self.size) - mean) / std for p in paths])
        return {name: pixels if layout == "nhwc" else pixels.transpose(0, 3, 1, 2)}

    def labelled_images(self, what: str = "eval") -> tuple:
        """(image paths, their class indices, the class names): each image's class is the subfolder
        right under the folder that holds it."""
        folder = Path(self.path)
        paths = self.image_paths(what)
        found = sorted({p.relative_to(folder).parts[0] for p in paths if len(p.relative_to(folder).parts) > 1})
        if not found:
            raise ModelError(f"{what} folder {folder}: labelled images go in one subfolder per class "
                             "(e.g. cat/1.jpg, dog/2.jpg)")
        loose = [p.name for p in paths if len(p.relative_to(folder).parts) == 1]
        if loose:
            raise ModelError(f"{what} folder {folder}: {loose[0]} is in no class subfolder")
        classes = found
        labels_file = folder / LABELS_FILE
        if labels_file.is_file():
            classes = [line.strip() for line in labels_file.read_text().splitlines() if line.strip()]
            unknown = [c for c in found if c not in classes]
            if unknown:
                raise ModelError(f"{labels_file}: no line for class folder(s) {', '.join(unknown)}")
        index = {name: i for i, name in enumerate(classes)}
        labels = np.array([index[p.relative_to(folder).parts[0]] for p in paths], np.int64)
        return paths, labels, classes


def _as_text(values) -> Optional[str]:
    if values is None or isinstance(values, str):
        return values
    if np.isscalar(values):
        return str(values)
    return ",".join(str(float(v)) for v in values)


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
