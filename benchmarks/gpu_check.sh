#!/usr/bin/env bash
# The GPU check from the repository root: `bash benchmarks/gpu_check.sh [OUT_DIR] [gpu_check.py options]`.
#
# For a machine whose Python lacks some of the project's packages (the device image has torch, timm, tensorboard,
# scikit-learn and scikit-image but no DeepSpeed or webdataset): wheels carried in .whl/ (an ignored folder) are
# unpacked into a temporary site folder on PYTHONPATH first, nothing is installed into the machine's Python; then
# benchmarks/gpu_check.py runs. Python: $PYTHON, else .venv/bin/python when present, else python3.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ -n "${PYTHON:-}" ]; then
  py=$PYTHON
elif [ -x .venv/bin/python ]; then
  py=.venv/bin/python
else
  py=python3
fi
if compgen -G ".whl/*.whl" >/dev/null; then
  site=$(mktemp -d /tmp/gpu_check_site.XXXXXX)
  "$py" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$site" .whl/*.whl
  export PYTHONPATH="$site${PYTHONPATH:+:$PYTHONPATH}"
fi
export PYTHONUNBUFFERED=1
exec "$py" benchmarks/gpu_check.py "$@"
