#!/usr/bin/env bash
# Instructions an inference executes inside edgeq's native library on arm64, counted under qemu-user: a
# proxy for comparing kernel variants (portable, neon, neon-dotprod) where no ARM board is at hand. It is
# not a speed: it weighs a load, an sdot and a scalar add alike and knows nothing of caches or pipelines.
#
# qemu logs each translated block's instructions (-d in_asm) and each block it runs (-d exec, nochain so
# that every one is logged), only for addresses inside the library (-dfilter). The sums start at a marker
# call made after one warm-up inference, so prepare (weight packing) and first-call work are left out.
# Each model runs twice: once to learn where the library is mapped (setarch -R keeps it there), once
# counted. With BLAS=1 the BLAS library numpy loaded is counted too.
#
# Needs the root, the runtime's Python dependencies and the extension that scripts/check_arm64.sh leaves
# in WORKDIR (default /tmp/edgeq-arm64).
# Usage: scripts/count_arm64_instructions.sh MODEL.tflite VARIANT [QEMU_CPU] [WORKDIR]
#        (VARIANT neon-dotprod needs QEMU_CPU max, the default; neon and portable run on cortex-a72 too)
set -euo pipefail

MODEL=$(realpath "$1")
VARIANT=$2
CPU=${3:-max}
WORK=${4:-/tmp/edgeq-arm64}
ROOT=$WORK/root
PYDEPS=$WORK/pydeps
if [ ! -x "$ROOT/usr/bin/python3.11" ] || ! ls "$PYDEPS"/edgeq/runtime/native/_kernels.*.so >/dev/null 2>&1; then
    echo "no arm64 root with the extension built in $WORK: run scripts/check_arm64.sh first" >&2
    exit 2
fi
SCRATCH=$(mktemp -d)
trap 'rm -rf "$SCRATCH"' EXIT

cat >"$SCRATCH/run.py" <<'EOF'
import ctypes, os, sys
import numpy as np
from edgeq.runtime import native
from edgeq.runtime.interpreter import Interpreter
model, variant = sys.argv[1], sys.argv[2]
native.use_isa(variant)
np.dot(np.ones((64, 64), np.float32), np.ones((64, 64), np.float32))  # BLAS loaded before the maps are read


def span(word):
    lines = [line for line in open("/proc/self/maps") if word in line]
    if not lines:
        return 0, 0
    return (min(int(line.split("-")[0], 16) for line in lines),
            max(int(line.split()[0].split("-")[1], 16) for line in lines))


kernels, blas = span("_kernels"), span("blas")
marker = ctypes.cast(native._library.edgeq_isa_input_shift, ctypes.c_void_p).value
print(f"map 0x{kernels[0]:x} 0x{kernels[1]:x} 0x{blas[0]:x} 0x{blas[1]:x} 0x{marker:x}", flush=True)
if os.environ.get("MAP_ONLY"):
    sys.exit(0)
interpreter = Interpreter(model_path=model)
detail = interpreter.get_input_details()[0]
rng = np.random.default_rng(0)
x = rng.standard_normal(detail["shape"]).astype(np.float32) if detail["dtype"] == np.float32 else \
    rng.integers(-128, 128, detail["shape"]).astype(detail["dtype"])
interpreter.run(x)
native._library.edgeq_isa_input_shift(ctypes.c_int(-1))  # the marker: counting starts here
interpreter.run(x)
print(f"ran on {native.describe()}", flush=True)
EOF

# Blocks' sizes from the in_asm listings; each executed block's size added once the marker ran.
cat >"$SCRATCH/count.awk" <<'EOF'
function hex(text,    value, i) {  # mawk has no strtonum
    value = 0
    for (i = 3; i <= length(text); i++) value = value * 16 + index("0123456789abcdef", substr(text, i, 1)) - 1
    return value
}
/^IN:/ { listing = 1; first = ""; n = 0; next }
listing && /^0x[0-9a-f]+:/ { if (first == "") first = substr($1, 1, length($1) - 1); n++; next }
listing { if (first != "") size[first] = n; listing = 0 }
/^Trace/ {
    split($0, fields, "/"); pc = fields[2]; sub(/^0+/, "", pc); pc = "0x" pc
    if (pc == marker) { counting = 1; kernels = 0; blas = 0; next }
    if (!counting) next
    if (!(pc in inside)) inside[pc] = hex(pc) >= kernel_low && hex(pc) < kernel_high
    if (inside[pc]) kernels += size[pc]; else blas += size[pc]
}
END { printf "%d %d\n", kernels, blas }
EOF

arm() {
    (cd "$SCRATCH" && OPENBLAS_NUM_THREADS=1 PYTHONPATH="$PYDEPS" PYTHONDONTWRITEBYTECODE=1 \
        LD_LIBRARY_PATH="$ROOT/usr/lib/aarch64-linux-gnu/blas:$ROOT/usr/lib/aarch64-linux-gnu/lapack" \
        setarch "$(uname -m)" -R qemu-aarch64-static -cpu "$CPU" "$@" -L "$ROOT" "$ROOT/usr/bin/python3.11" \
        "$SCRATCH/run.py" "$MODEL" "$VARIANT")
}
read -r _ kernel_low kernel_high blas_low blas_high marker < <(MAP_ONLY=1 arm | grep '^map')
ranges=$kernel_low..$kernel_high
[ -n "${BLAS:-}" ] && [ "$blas_low" != 0x0 ] && ranges=$ranges,$blas_low..$blas_high
mkfifo "$SCRATCH/log"
awk -v marker="$marker" -v kernel_low="$((kernel_low))" -v kernel_high="$((kernel_high))" \
    -f "$SCRATCH/count.awk" <"$SCRATCH/log" >"$SCRATCH/counts" &
counter=$!
arm -d in_asm,exec,nochain -dfilter "$ranges" -D "$SCRATCH/log" | grep -v '^map'
wait "$counter"
read -r kernels blas <"$SCRATCH/counts"
echo "$(basename "$MODEL"), $VARIANT, qemu -cpu $CPU: $kernels instructions in the native library per inference" \
    "(qemu count, not a speed)${BLAS:+; $blas in BLAS}"
