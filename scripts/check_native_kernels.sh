#!/usr/bin/env bash
# Checks every native kernel variant against a plain C reference (tests/native/kernel_selftest.c):
# the variants this machine runs, and, where an aarch64 cross compiler and qemu-user are installed
# (apt-get install gcc-aarch64-linux-gnu qemu-user-static), the aarch64 ones (sdot on a CPU with
# dotprod, smlal on a Cortex-A72 without it) under emulation. Not part of CI: the Python tests
# (tests/test_native_kernels.py) hold the x86-64 variants to LiteRT's reference kernels.
#
# Usage: scripts/check_native_kernels.sh
set -euo pipefail

REPO=$(cd "$(dirname "$0")/.." && pwd)
SRC=$REPO/runtime/native/src
# Every kernel source but the Python module stub.
SOURCES=()
for source in "$SRC"/*.c; do
    [ "$(basename "$source")" = module.c ] || SOURCES+=("$source")
done
OUT=$(mktemp -d)
trap 'rm -rf "$OUT"' EXIT

echo "== $(uname -m) (this machine)"
${CC:-cc} -O2 -std=gnu99 -Wall -o "$OUT/selftest" "$REPO/tests/native/kernel_selftest.c" "${SOURCES[@]}" -lm -lpthread
"$OUT/selftest"
${CC:-cc} -O2 -std=gnu99 -Wall -o "$OUT/float_selftest" "$REPO/tests/native/float_selftest.c" "${SOURCES[@]}" -lm -lpthread
"$OUT/float_selftest"

if command -v aarch64-linux-gnu-gcc >/dev/null && command -v qemu-aarch64-static >/dev/null; then
    aarch64-linux-gnu-gcc -O2 -std=gnu99 -Wall -static -o "$OUT/selftest-aarch64" \
        "$REPO/tests/native/kernel_selftest.c" "${SOURCES[@]}" -lm -lpthread
    aarch64-linux-gnu-gcc -O2 -std=gnu99 -Wall -static -o "$OUT/float_selftest-aarch64" \
        "$REPO/tests/native/float_selftest.c" "${SOURCES[@]}" -lm -lpthread
    echo "== aarch64 with dotprod (qemu -cpu max)"
    qemu-aarch64-static -cpu max "$OUT/selftest-aarch64"
    qemu-aarch64-static -cpu max "$OUT/float_selftest-aarch64"
    echo "== aarch64 without dotprod (qemu -cpu cortex-a72)"
    qemu-aarch64-static -cpu cortex-a72 "$OUT/selftest-aarch64"
    qemu-aarch64-static -cpu cortex-a72 "$OUT/float_selftest-aarch64"
else
    echo "aarch64: skipped (needs aarch64-linux-gnu-gcc and qemu-aarch64-static)"
fi
