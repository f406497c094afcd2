#!/usr/bin/env bash
# Builds edgeq's native kernels with Debian bookworm's own gcc on arm64 (or armhf, the 32-bit Raspberry Pi
# OS base), under qemu-user-static, and runs the runtime there on every sample model and the four test models
# of tests/models, float and int8: once on the numpy kernels and once per emulated CPU on the native ones
# (arm64: -cpu cortex-a72, no dot product, the smlal kernels, as a Raspberry Pi 4; -cpu max, the sdot kernels,
# as a Pi 5; armhf: the portable C path). Every run's outputs must equal the x86-64 ones: int8 exactly, float
# within 1e-5 of the output's scale. Each native run must get the variant its CPU calls for (neon, neon-dotprod,
# portable), and under each CPU scripts/check_native_exactness.py also checks which kernels every native variant
# prepares and holds each to the numpy kernels op by op. Slow (minutes); not part of CI.
#
# Machines without binfmt_misc cannot exec ARM binaries inside a chroot, so the root is only unpacked: apt
# (with a private state directory, the root's architecture) downloads python3, numpy, gcc, libc6-dev and
# python3-dev with their dependencies, each .deb is extracted (no maintainer script runs), and every ARM
# program starts through qemu-*-static -L ROOT, which resolves the ARM loader and libraries inside ROOT. gcc's own children
# (cc1, as, collect2) start through qemu the same way (gcc -wrapper), and collect2's ld through a small
# script; setup.py build_ext runs under the root's python3 with that gcc as CC, as pip would on the board.
#
# Usage: scripts/check_arm64.sh [WORKDIR]              (arm64; default WORKDIR /tmp/edgeq-arm64)
#        ARCH=armhf scripts/check_arm64.sh [WORKDIR]   (armhf; default WORKDIR /tmp/edgeq-armhf)
# Needs root for apt-get; x86 side: PYTHON (default python3) with edgeq and its convert extra installed.
set -euo pipefail

REPO=$(cd "$(dirname "$0")/.." && pwd)
ARCH=${ARCH:-arm64}
case "$ARCH" in
    arm64) QEMU=qemu-aarch64-static TRIPLET=aarch64-linux-gnu CPUS=(cortex-a72 max) ;;
    armhf) QEMU=qemu-arm-static TRIPLET=arm-linux-gnueabihf CPUS=(cortex-a7) ;;
    *) echo "ARCH must be arm64 or armhf, not $ARCH" >&2; exit 2 ;;
esac
# The native variant each emulated CPU must get: smlal NEON without the dot product (Raspberry Pi 4), sdot with
# it (Pi 5), portable C on 32-bit ARM.
expected_variant() {
    case "$1" in
        cortex-a72) echo neon ;;
        max) echo neon-dotprod ;;
        *) echo portable ;;
    esac
}
WORK=${1:-/tmp/edgeq-$ARCH}
ROOT=$WORK/root
CASES=$WORK/cases
PYDEPS=$WORK/pydeps
TOOLS=$WORK/toolbin
PYTHON_X86=${PYTHON:-python3}  # with edgeq installed (pip install -e ".[convert]")
# A relative path (PYTHON=.venv/bin/python) made absolute: the ARM runs change directory.
case "$PYTHON_X86" in */*) PYTHON_X86=$(cd "$(dirname "$PYTHON_X86")" && pwd)/$(basename "$PYTHON_X86") ;; esac
PACKAGES=(python3 python3-numpy gcc libc6-dev python3-dev python3-setuptools)
mkdir -p "$WORK" "$CASES" "$PYDEPS" "$TOOLS"
STARTED=$SECONDS
stage_time() { echo "time: $1: $((SECONDS - STAGE_STARTED)) s"; STAGE_STARTED=$SECONDS; }
STAGE_STARTED=$SECONDS

if ! command -v "$QEMU" >/dev/null; then
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq qemu-user-static >/dev/null
fi

# -- 1. the root: Debian's python3, numpy (and its BLAS), gcc, libc6-dev, python3-dev, setuptools ---------
if [ ! -x "$ROOT/usr/bin/python3.11" ] || [ ! -x "$ROOT/usr/bin/$TRIPLET-gcc-12" ] ||
   [ ! -f "$ROOT/usr/include/python3.11/Python.h" ] || [ ! -d "$ROOT/usr/lib/python3/dist-packages/numpy" ] ||
   [ ! -d "$ROOT/usr/lib/python3/dist-packages/setuptools" ]; then
    APT_DIR=$WORK/apt
    mkdir -p "$APT_DIR"/etc/apt/apt.conf.d "$APT_DIR"/etc/apt/preferences.d "$APT_DIR"/etc/apt/sources.list.d \
        "$APT_DIR"/var/lib/apt/lists/partial "$APT_DIR"/var/cache/apt/archives/partial "$APT_DIR"/var/lib/dpkg
    touch "$APT_DIR/var/lib/dpkg/status"  # nothing installed: every dependency is downloaded
    echo "deb [arch=$ARCH signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] http://deb.debian.org/debian bookworm main" \
        >"$APT_DIR/etc/apt/sources.list"
    if [ ! -f /usr/share/keyrings/debian-archive-keyring.gpg ]; then
        apt-get update -qq
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq debian-archive-keyring >/dev/null
    fi
    apt_arm=(apt-get -q -o "Dir=$APT_DIR" -o "Dir::State::status=$APT_DIR/var/lib/dpkg/status"
             -o "APT::Architecture=$ARCH" -o "APT::Architectures::=$ARCH"
             -o Dir::Etc::trusted=/etc/apt/trusted.gpg -o Dir::Etc::trustedparts=/etc/apt/trusted.gpg.d)
    "${apt_arm[@]}" update >"$WORK/apt.log" 2>&1 || { tail -20 "$WORK/apt.log"; exit 1; }
    "${apt_arm[@]}" install -y --download-only --no-install-recommends "${PACKAGES[@]}" >>"$WORK/apt.log" 2>&1 ||
        { tail -20 "$WORK/apt.log"; exit 1; }
    # /usr merged as bookworm has it (what debootstrap lays out): the root has no ld.so.cache, and the ARM
    # loader, which qemu shows /lib/TRIPLET only where the host has it too, then finds the libraries that
    # packages put in /lib (zlib for cc1) in /usr/lib/TRIPLET alone.
    mkdir -p "$ROOT/usr/bin" "$ROOT/usr/sbin" "$ROOT/usr/lib"
    for folder in bin sbin lib; do
        [ -e "$ROOT/$folder" ] || ln -s "usr/$folder" "$ROOT/$folder"
    done
    for deb in "$APT_DIR"/var/cache/apt/archives/*.deb; do
        dpkg-deb --fsys-tarfile "$deb" | tar -x --keep-directory-symlink -C "$ROOT"
    done
    echo "$ARCH root: $(ls "$APT_DIR"/var/cache/apt/archives/*.deb | wc -l) packages unpacked into $ROOT"
fi
stage_time "root"
# No maintainer script ran, so the BLAS alternative numpy loads is not linked: point at it, by its path
# outside the root (the loader stats the folder, which qemu-arm does not map into the root).
ARM_LIBRARY_PATH=$ROOT/usr/lib/$TRIPLET/blas:$ROOT/usr/lib/$TRIPLET/lapack
arm() {  # an ARM program of the root, with its libraries; $ARM_CPU picks the emulated CPU
    LD_LIBRARY_PATH=$ARM_LIBRARY_PATH "$QEMU" ${ARM_CPU:+-cpu "$ARM_CPU"} -L "$ROOT" "$@"
}

# -- 2. the pure-Python dependencies of the runtime, as wheels unpacked onto PYTHONPATH ------------
if [ ! -d "$PYDEPS/flatbuffers" ] || [ ! -d "$PYDEPS/tflite" ]; then
    rm -rf "$WORK/wheels"
    "$PYTHON_X86" -m pip download -q --no-deps --only-binary=:all: -d "$WORK/wheels" flatbuffers tflite
    for wheel in "$WORK"/wheels/*.whl; do
        "$PYTHON_X86" -m zipfile -e "$wheel" "$PYDEPS"
    done
fi
stage_time "python dependencies"

# -- 3. the native extension, built by the root's gcc under qemu -----------------------------------
# gcc's children are ARM programs too: -wrapper starts cc1, as and collect2 through qemu, and collect2
# finds the ld script first (-B) in the tool folder. qemu-arm (7.2) does not map statx paths into the root,
# and a 32-bit glibc stats through statx, so cc1 would drop /usr/include/TRIPLET as missing: it is named by
# its path outside the root (-isystem keeps it before /usr/include).
cat >"$TOOLS/ld" <<EOF
#!/bin/sh
exec "$QEMU" -L "$ROOT" "$ROOT/usr/bin/ld" "\$@"
EOF
cat >"$TOOLS/cc" <<EOF
#!/bin/sh
exec "$QEMU" -L "$ROOT" "$ROOT/usr/bin/$TRIPLET-gcc-12" -wrapper "$QEMU,-L,$ROOT" -B "$TOOLS/" -B "$ROOT/usr/bin/" \\
    -isystem "$ROOT/usr/include/$TRIPLET" "\$@"
EOF
chmod +x "$TOOLS/ld" "$TOOLS/cc"
BUILD=$WORK/build
rm -rf "$BUILD"
mkdir -p "$BUILD"
cp -r "$REPO/setup.py" "$REPO/pyproject.toml" "$REPO/README.md" "$REPO/edgeq" "$REPO/runtime" "$REPO/converter" "$BUILD/"
find "$BUILD" \( -name __pycache__ -o -name '*.so' \) -prune -exec rm -rf {} +
(cd "$BUILD" && CC="$TOOLS/cc" LDSHARED="$TOOLS/cc -shared" arm "$ROOT/usr/bin/python3.11" setup.py build_ext --inplace \
    >"$WORK/build.log" 2>&1) || { tail -30 "$WORK/build.log"; exit 1; }
EXTENSION=$(ls "$BUILD"/runtime/native/_kernels.*.so 2>/dev/null || true)
# The extension is optional for setup.py (a failed build only warns): here a missing one is a failure.
if [ -z "$EXTENSION" ]; then
    grep -iE "error|warning" "$WORK/build.log" | head -30
    echo "FAIL: the native extension did not build with $ARCH gcc (see $WORK/build.log)"
    exit 1
fi
grep -E "warning:" "$WORK/build.log" || true
echo "$ARCH: built $(basename "$EXTENSION") with $(arm "$ROOT/usr/bin/$TRIPLET-gcc-12" --version | head -1)"
stage_time "native build under qemu"

# The runtime package itself, laid out as it installs: the package edgeq (with edgeq.testing, for the
# op-by-op check) and edgeq.runtime inside, with the extension just built; no converter.
rm -rf "$PYDEPS/runtime" "$PYDEPS/edgeq"
mkdir -p "$PYDEPS/edgeq"
cp "$REPO"/edgeq/*.py "$PYDEPS/edgeq/"
cp -r "$REPO/edgeq/testing" "$PYDEPS/edgeq/testing"
cp -r "$REPO/runtime" "$PYDEPS/edgeq/runtime"
find "$PYDEPS/edgeq" \( -name __pycache__ -o -name '*.so' \) -prune -exec rm -rf {} +
cp "$EXTENSION" "$PYDEPS/edgeq/runtime/native/"

# -- 4. x86-64: write every sample model as float and int8 .tflite, with inputs and our outputs ----
"$PYTHON_X86" - "$REPO" "$CASES" <<'EOF'
import json, sys
from pathlib import Path
import numpy as np
repo, cases = Path(sys.argv[1]), Path(sys.argv[2])
from edgeq.converter.api import convert
from edgeq.runtime import native
from edgeq.runtime.interpreter import Interpreter

print(f"x86-64: {native.describe()}")
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
stage_time "x86-64 cases"

# -- 5. ARM: the same models through the runtime, numpy kernels, then native under each CPU ---------
rm -f "$CASES"/*_arm-*.npy
RUNS=(numpy "${CPUS[@]}")
# Away from the checkout, whose edgeq/ folder (without runtime/ inside) would shadow the copy on PYTHONPATH.
cd "$WORK"
for run in "${RUNS[@]}"; do
    if [ "$run" = numpy ]; then cpu="" no_native=1; else cpu=$run no_native=""; fi
    expected=$([ "$run" = numpy ] && echo none || expected_variant "$run")
    ARM_CPU=$cpu PYTHONPATH="$PYDEPS" PYTHONDONTWRITEBYTECODE=1 EDGEQ_NO_NATIVE=$no_native \
        arm "$ROOT/usr/bin/python3.11" - "$CASES" "$ARCH" "$run" "$expected" <<'EOF' 2>&1 | grep -v "native int8 kernels off"
import platform, sys
from pathlib import Path
import numpy as np
from edgeq.runtime import native
from edgeq.runtime.interpreter import Interpreter
cases, arch, run, expected = Path(sys.argv[1]), sys.argv[2], sys.argv[3], sys.argv[4]
label = f"{arch} ({'default CPU' if run == 'numpy' else f'qemu -cpu {run}'})"
print(f"{label}: {platform.machine()}, Python {platform.python_version()}, numpy {np.__version__}: {native.describe()}")
if (native.isa() or "none") != expected:
    print(f"FAIL {label}: the models would run on {native.isa() or 'the numpy kernels'}, not {expected}")
    sys.exit(1)
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
    np.save(cases / f"{model.stem}_arm-{run}.npy", outputs)
print(f"{label}: {len(list(cases.glob('*.tflite')))} models run")
EOF
    stage_time "$ARCH models, $run"
done

# -- 6. ARM: every native variant against the numpy kernels, op by op, under each CPU --------------
EXACTNESS_FAILED=0
for cpu in "${CPUS[@]}"; do
    echo "$ARCH (qemu -cpu $cpu): native variants against the numpy kernels"
    ARM_CPU=$cpu PYTHONPATH="$PYDEPS" PYTHONDONTWRITEBYTECODE=1 \
        arm "$ROOT/usr/bin/python3.11" "$REPO/scripts/check_native_exactness.py" --expect "$(expected_variant "$cpu")" ||
        EXACTNESS_FAILED=1
    stage_time "$ARCH op-by-op exactness, $cpu"
done

# -- 7. compare every run with x86-64 -------------------------------------------------------------
"$PYTHON_X86" - "$CASES" "$ARCH" "${RUNS[@]}" <<'EOF' || EXACTNESS_FAILED=1
import sys
from pathlib import Path
import numpy as np
cases, arch, runs = Path(sys.argv[1]), sys.argv[2], sys.argv[3:]
failed = 0
for run in runs:
    label = f"{arch} {'numpy' if run == 'numpy' else f'native, qemu -cpu {run}'}"
    compared = 0
    for x86_file in sorted(cases.glob("*_x86.npy")):
        name = x86_file.name[:-len("_x86.npy")]
        x86, arm = np.load(x86_file), np.load(cases / f"{name}_arm-{run}.npy")
        if x86.dtype != arm.dtype or x86.shape != arm.shape:
            verdict, ok = f"shape/dtype differ: {x86.shape} {x86.dtype} vs {arm.shape} {arm.dtype}", False
        elif name.endswith("_int8") or np.issubdtype(x86.dtype, np.integer):
            # An int8 model's outputs are integers (or their dequantized values): exactly equal.
            mismatches = int(np.count_nonzero(x86 != arm))
            verdict, ok = f"integers equal: {mismatches == 0} ({mismatches} of {x86.size} differ)", mismatches == 0
        else:
            # Float: BLAS and libm differ between the two, so within 1e-5 of the output's largest value.
            difference = float(np.max(np.abs(x86.astype(np.float64) - arm)) / max(np.max(np.abs(x86)), 1e-30))
            verdict, ok = f"max |x86 - arm| / max |x86| = {difference:.3g} (limit 1e-5)", difference <= 1e-5
        failed += not ok
        compared += 1
        print(f"{'ok  ' if ok else 'FAIL'} {label}: {name}: {verdict}")
    print(f"{label}: {compared} cases compared with x86-64")
print(f"{arch} outputs equal x86-64 outputs in every run" if not failed else f"{failed} case(s) differ")
sys.exit(1 if failed else 0)
EOF
stage_time "compare"
echo "time: total: $((SECONDS - STARTED)) s"
if [ "$EXACTNESS_FAILED" != 0 ]; then
    echo "FAIL: $ARCH differs from x86-64 or from the numpy kernels (see above)"
    exit 1
fi
echo "PASS: $ARCH native build ($(IFS=,; echo "${CPUS[*]}")) and numpy kernels equal x86-64"
