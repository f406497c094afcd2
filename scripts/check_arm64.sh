#!/usr/bin/env bash
# Runs edgeq's runtime on arm64 (Debian bookworm's python3 and python3-numpy 1.24, under
# qemu-user-static) on every sample model and the four test models of tests/models, float and int8,
# and checks that the outputs equal the x86-64 ones: int8 exactly, float within 1e-5 of the output's
# scale. Slow (minutes); not part of CI.
#
# Machines without binfmt_misc cannot exec arm64 binaries inside a chroot, so the root is only
# unpacked (debootstrap --foreign downloads the packages; each .deb is extracted with dpkg -x) and
# python3 is started through qemu-aarch64-static -L ROOT, which resolves the arm64 loader and
# libraries inside ROOT.
#
# Usage: scripts/check_arm64.sh [WORKDIR]   (default /tmp/edgeq-arm64; the root is reused if there)
# Needs root for apt-get; x86 side: the repo's venv (onnx, converter) active or on PATH as python3.
set -euo pipefail

REPO=$(cd "$(dirname "$0")/.." && pwd)
WORK=${1:-/tmp/edgeq-arm64}
ROOT=$WORK/root
CASES=$WORK/cases
PYDEPS=$WORK/pydeps
PYTHON_X86=${PYTHON:-python3}  # with edgeq installed (pip install -e .)
mkdir -p "$WORK" "$CASES" "$PYDEPS"

# -- 1. arm64 root: python3 + Debian's numpy (and its BLAS) -------------------------------------
if [ ! -x "$ROOT/usr/bin/python3.11" ] || ! ls "$ROOT"/usr/lib/python3/dist-packages/numpy >/dev/null 2>&1; then
    if ! command -v debootstrap >/dev/null || ! command -v qemu-aarch64-static >/dev/null; then
        apt-get update -qq
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq debootstrap qemu-user-static >/dev/null
    fi
    rm -rf "$ROOT"
    debootstrap --foreign --arch=arm64 --variant=minbase --include=python3,python3-numpy \
        bookworm "$ROOT" >"$WORK/debootstrap.log" 2>&1 || { tail -20 "$WORK/debootstrap.log"; exit 1; }
    for deb in "$ROOT"/var/cache/apt/archives/*.deb; do
        dpkg -x "$deb" "$ROOT"
    done
fi
if ! command -v qemu-aarch64-static >/dev/null; then
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq qemu-user-static >/dev/null
fi

# -- 2. the pure-Python dependencies of the runtime, as wheels unpacked onto PYTHONPATH ------------
if [ ! -d "$PYDEPS/flatbuffers" ] || [ ! -d "$PYDEPS/tflite" ]; then
    rm -rf "$WORK/wheels"
    "$PYTHON_X86" -m pip download -q --no-deps --only-binary=:all: -d "$WORK/wheels" flatbuffers tflite
    for wheel in "$WORK"/wheels/*.whl; do
        "$PYTHON_X86" -m zipfile -e "$wheel" "$PYDEPS"
    done
fi
# The runtime package itself, copied so that the arm64 side imports exactly this checkout's code.
# Laid out as it installs: the package edgeq with edgeq.runtime inside (no converter, no native build).
rm -rf "$PYDEPS/runtime" "$PYDEPS/edgeq"
mkdir -p "$PYDEPS/edgeq"
cp "$REPO/edgeq/__init__.py" "$PYDEPS/edgeq/"
cp -r "$REPO/runtime" "$PYDEPS/edgeq/runtime"
find "$PYDEPS/edgeq" \( -name __pycache__ -o -name '*.so' \) -prune -exec rm -rf {} +

# -- 3. x86-64: write every sample model as float and int8 .tflite, with inputs and our outputs ----
"$PYTHON_X86" - "$REPO" "$CASES" <<'EOF'
import json, sys
from pathlib import Path
import numpy as np
repo, cases = Path(sys.argv[1]), Path(sys.argv[2])
from edgeq.converter.api import convert
from edgeq.runtime.interpreter import Interpreter

samples = repo / "sample_models"
manifest = json.loads((samples / "manifest.json").read_text())
for entry in manifest["models"]:
    test = np.load(samples / entry["test_file"])
    images = test[entry["input_name"]][:8].astype(np.float32)
    for variant in ("float", "int8"):
        name = f"{entry['name']}_{variant}"
        # The int8 model takes and gives int8 tensors (--io int8), so its outputs are compared as integers.
        options = dict(quantize="int8", calibration=str(samples / entry["calib_file"]), io_dtype="int8") \
            if variant == "int8" else {}
        result = convert(str(samples / entry["file"]), str(cases / f"{name}.tflite"), **options)
        interpreter = Interpreter(model_content=result.content)
        detail = interpreter.get_input_details()[0]
        x = images
        if x.ndim == 4 and tuple(detail["shape"][1:]) != x.shape[1:]:
            x = x.transpose(0, 2, 3, 1)  # NCHW samples, NHWC model input
        if detail["dtype"] != np.float32:  # a model with integer input (--io int8)
            scale, zero_point = detail["quantization"]
            x = np.clip(np.round(x / scale) + zero_point, -128, 127).astype(detail["dtype"])
        x = np.ascontiguousarray(x)
        outputs = np.concatenate([next(iter(interpreter.run(sample[None]).values())) for sample in x])
        np.save(cases / f"{name}_input.npy", x)
        np.save(cases / f"{name}_x86.npy", outputs)
        print(f"x86-64: {name}: input {x.shape} {x.dtype}, output {outputs.shape} {outputs.dtype}")

# The detector, recogniser (unrolled LSTM), segmenter and encoder test models: float and int8 (float
# I/O; the int8 lookup tables come from the C library's expf/tanhf, which this compares across the two).
REAL_WORLD_SHAPES = {
    "yolo_detector": {"images": (1, 3, 64, 64)},
    "crnn_text": {"images": (1, 1, 32, 128)},
    "unet_segmenter": {"images": (1, 3, 64, 64)},
    "bert_encoder": {"input_ids": (1, 16), "attention_mask": (1, 16)},
}
models = repo / "tests" / "models"


def split(data, kind: str, names) -> dict:
    arrays = {n: data[f"{kind}_{n}"] for n in names}
    return {n: a.astype(np.float32) / 255 if a.dtype == np.uint8 else a for n, a in arrays.items()}


for model_name, input_shapes in REAL_WORLD_SHAPES.items():
    with np.load(models / f"{model_name}_data.npz") as data:
        calibration, evaluation = split(data, "calib", input_shapes), split(data, "eval", input_shapes)
    np.savez(cases / f"{model_name}_calibration.npz", **calibration)
    for variant in ("float", "int8"):
        name = f"{model_name}_{variant}"
        options = dict(quantize="int8", calibration=str(cases / f"{model_name}_calibration.npz")) \
            if variant == "int8" else {}
        result = convert(str(models / f"{model_name}.onnx"), str(cases / f"{name}.tflite"),
                         input_shapes=input_shapes, **options)
        interpreter = Interpreter(model_content=result.content)
        feeds = {}
        for detail in interpreter.get_input_details():
            x = evaluation[detail["name"]][:4]
            feeds[detail["name"]] = np.ascontiguousarray(
                (x.transpose(0, 2, 3, 1) if x.ndim == 4 else x).astype(detail["dtype"]))
        count = len(next(iter(feeds.values())))
        outputs = np.concatenate([next(iter(interpreter.run({n: v[i:i + 1] for n, v in feeds.items()}).values()))
                                  for i in range(count)])
        np.savez(cases / f"{name}_input.npz", **feeds)
        np.save(cases / f"{name}_x86.npy", outputs)
        print(f"x86-64: {name}: inputs {sorted(feeds)}, output {outputs.shape} {outputs.dtype}")
EOF

# -- 4. arm64: the same models through the runtime, with Debian's numpy ---------------------------
rm -f "$CASES"/*_arm64.npy
# Away from the checkout, whose edgeq/ folder (without runtime/ inside) would shadow the copy on PYTHONPATH.
cd "$WORK"
export LD_LIBRARY_PATH=/usr/lib/aarch64-linux-gnu/blas:/usr/lib/aarch64-linux-gnu/lapack
PYTHONPATH="$PYDEPS" PYTHONDONTWRITEBYTECODE=1 EDGEQ_NO_NUMBA=1 \
    qemu-aarch64-static -L "$ROOT" "$ROOT/usr/bin/python3.11" - "$CASES" <<'EOF'
import platform, sys
from pathlib import Path
import numpy as np
from edgeq.runtime.interpreter import Interpreter
cases = Path(sys.argv[1])
print(f"arm64: {platform.machine()}, Python {platform.python_version()}, numpy {np.__version__}")
for model in sorted(cases.glob("*.tflite")):
    interpreter = Interpreter(model_path=str(model))
    if (cases / f"{model.stem}_input.npz").exists():  # inputs by name
        with np.load(cases / f"{model.stem}_input.npz") as loaded:
            feeds = {n: loaded[n] for n in loaded.files}
        count = len(next(iter(feeds.values())))
        runs = [interpreter.run({n: v[i:i + 1] for n, v in feeds.items()}) for i in range(count)]
    else:
        runs = [interpreter.run(sample[None]) for sample in np.load(cases / f"{model.stem}_input.npy")]
    outputs = np.concatenate([next(iter(result.values())) for result in runs])
    np.save(cases / f"{model.stem}_arm64.npy", outputs)
    print(f"arm64: {model.stem}: output {outputs.shape} {outputs.dtype}")
EOF
unset LD_LIBRARY_PATH

# -- 5. compare ---------------------------------------------------------------------------------
"$PYTHON_X86" - "$CASES" <<'EOF'
import sys
from pathlib import Path
import numpy as np
cases = Path(sys.argv[1])
failed = 0
for x86_file in sorted(cases.glob("*_x86.npy")):
    name = x86_file.name[:-len("_x86.npy")]
    x86, arm = np.load(x86_file), np.load(cases / f"{name}_arm64.npy")
    if x86.dtype != arm.dtype or x86.shape != arm.shape:
        verdict, ok = f"shape/dtype differ: {x86.shape} {x86.dtype} vs {arm.shape} {arm.dtype}", False
    elif name.endswith("_int8") or np.issubdtype(x86.dtype, np.integer):
        # An int8 model's outputs are integers (or their dequantized values): exactly equal.
        mismatches = int(np.count_nonzero(x86 != arm))
        verdict, ok = f"integers equal: {mismatches == 0} ({mismatches} of {x86.size} differ)", mismatches == 0
    else:
        # Float: BLAS and libm differ between the two, so within 1e-5 of the output's largest value.
        difference = float(np.max(np.abs(x86.astype(np.float64) - arm)) / max(np.max(np.abs(x86)), 1e-30))
        verdict, ok = f"max |x86 - arm64| / max |x86| = {difference:.3g} (limit 1e-5)", difference <= 1e-5
    failed += not ok
    print(f"{'ok  ' if ok else 'FAIL'} {name}: {verdict}")
print("arm64 outputs equal x86-64 outputs" if not failed else f"{failed} model(s) differ")
sys.exit(1 if failed else 0)
EOF
