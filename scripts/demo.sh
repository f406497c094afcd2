#!/usr/bin/env bash
# Installs edgeq into .venv and runs the main job on a shipped sample model:
# ONNX -> TFLite, a look inside the file, and one inference on our runtime and on LiteRT.
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -m venv .venv
.venv/bin/python -m pip install --quiet --disable-pip-version-check -e ".[test]"
. .venv/bin/activate
model=sample_models/digits_mobilenetv2
mkdir -p out
python - <<'PY'
import numpy as np
test = np.load("sample_models/digits_mobilenetv2_test.npz")
np.save("out/digit.npy", test["input"][:1])
print(f"sample digit: label {int(test['y'][0])}")
PY
edgeq convert "$model.onnx" -o out/digits_mobilenetv2.tflite
edgeq inspect out/digits_mobilenetv2.tflite
edgeq run out/digits_mobilenetv2.tflite --input out/digit.npy --top-k 3
edgeq run out/digits_mobilenetv2.tflite --input out/digit.npy --top-k 3 --engine litert
