#!/usr/bin/env bash
# Create .venv (if missing) and install ltemlive with its test tools and the file formats (RosettaSciIO);
# later calls return at once unless pyproject.toml changed (a stamp file records the last install).
# The CPU build of torch goes in first: a bare `torch` requirement would resolve to a CUDA build of
# several GB. 2.13.0 is what this project is tested with; pyproject.toml accepts >=2.2,<2.15.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
VENV=${VENV:-.venv}
STAMP="$VENV/.ltemlive-installed"
if [ -f "$STAMP" ] && [ "$STAMP" -nt pyproject.toml ] && "$VENV/bin/python" -c "import importlib.util as u; assert u.find_spec('torch') and u.find_spec('ltemlive')" 2>/dev/null; then
  exit 0
fi
if [ ! -x "$VENV/bin/python" ]; then
  "$PY" -m venv "$VENV"
fi
"$VENV/bin/python" -m pip install -q --upgrade pip
if ! "$VENV/bin/python" -c "import torch" 2>/dev/null; then
  "$VENV/bin/python" -m pip install -q "torch==${TORCH_VERSION:-2.13.0}"
fi
"$VENV/bin/python" -m pip install -q -e ".[test,formats]"
touch "$STAMP"
