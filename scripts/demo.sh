#!/usr/bin/env bash
# Installs edgeq into .venv and runs the main job on a shipped sample model (a MobileNetV2-style
# digits classifier): ONNX -> float and int8 TFLite, a look inside the int8 file, one inference on
# our runtime and on LiteRT, and the accuracy-vs-size report of its variants in out/report/.
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -m venv .venv
.venv/bin/python -m pip install --quiet --disable-pip-version-check -e ".[convert,report,test]"
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
edgeq convert "$model.onnx" -o out/digits_mobilenetv2_int8.tflite -q \
    --quantize int8 --calibration "${model}_calib.npz"
edgeq inspect out/digits_mobilenetv2_int8.tflite
edgeq run out/digits_mobilenetv2_int8.tflite --input out/digit.npy --top-k 3
edgeq run out/digits_mobilenetv2_int8.tflite --input out/digit.npy --top-k 3 --engine litert
edgeq report "$model.onnx" --calibration "${model}_calib.npz" --eval "${model}_test.npz" \
    --eval-samples 200 --prune-channels 0.25 --reconstruct -o out/report
echo "report: out/report/report.html (also report.md, report.json, accuracy_vs_size.png)"
