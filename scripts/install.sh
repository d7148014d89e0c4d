#!/usr/bin/env bash
# Install litdistill (and its dev extras with --dev) without pulling CUDA wheels on a CPU machine.
# PyTorch goes first: the CPU build where no NVIDIA GPU is present, else the default (CUDA) build.
set -euo pipefail
PY=${PYTHON:-python3}
here="$(cd "$(dirname "$0")/.." && pwd)"
if ! "$PY" -c "import torch" 2>/dev/null; then
  if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then
    "$PY" -m pip install "torch==2.13.0"
  else
    # The PyTorch CPU index serves a CPU-only build; where it is unreachable (a registry mirror
    # that already carries the CPU build, as on the litdistill dev machines) fall back to PyPI's name.
    "$PY" -m pip install --index-url https://download.pytorch.org/whl/cpu --timeout 15 --retries 0 "torch==2.13.0" \
      || "$PY" -m pip install "torch==2.13.0"
  fi
fi
if [ "${1:-}" = "--dev" ]; then
  "$PY" -m pip install -e "$here[dev]"
  # W&B's sweep-suggestion package, which the sweep tests also run; it pins numpy<2, which would
  # downgrade numpy under everything else, and works on numpy 2, so it goes in without its pins.
  "$PY" -m pip install --no-deps "sweeps==0.3.0"
else
  "$PY" -m pip install -e "$here[quant]"
fi
