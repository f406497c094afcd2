#!/usr/bin/env bash
# Installs edgeq with its test dependencies into .venv and runs the test suite, the slow tier
# included (as .ci/run does). Arguments go to pytest: `bash scripts/test.sh -m "not slow"` is the
# quick tier, without the ImageNet-size and real-world models and the whole reports.
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -m venv .venv
.venv/bin/python -m pip install --quiet --disable-pip-version-check -e ".[test]"
exec .venv/bin/python -m pytest -q "$@"
