#!/usr/bin/env bash
# Install vLLM (pinned) into a kvledger venv WITHOUT its CUDA stack: the "light install" of
# shared/reference/vllm-tap-feasibility.md §2. The tap's tests (tests/tap/) run the real vLLM
# schedulers and NixlConnector against it; only the model's forward pass is faked.
#
# Why a script and not only an extra: vllm's wheel pins torch==2.14.0 (a multi-GB CUDA build) and
# CUDA-only kernel packages, and xgrammar pulls triton -> the CUDA torch again. So vllm, xgrammar and
# the nixl meta package go in with --no-deps; their pure-Python/CPU requirements are listed here
# (and in pyproject's [vllm] extra). `pip check` then names the CUDA-only packages that are left
# out on purpose; that is expected.
#
# Usage: scripts/install-vllm-light.sh [VENV]   (default .venv; idempotent)
# Cost: 80 s on an idle 2-core machine (the study), 317 s measured on a loaded one; the venv grows
# to 2.8 GB (vllm 877 MB, the CPU torch it already had 754 MB).
set -euo pipefail
cd "$(dirname "$0")/.."
VENV="${1:-.venv}"
PIP="$VENV/bin/pip"
PY="$VENV/bin/python"
# The one place the vLLM version is pinned for the tap (tap/compat.py checks the same version).
VLLM_VERSION="0.33.0"
NIXL_VERSION="1.5.1"
XGRAMMAR_VERSION="0.2.8"

# Done already when the pinned vllm imports its connector base and the scheduler (both need the
# extra's packages); then nothing is downloaded.
if "$PY" - "$VLLM_VERSION" <<'PYEOF' >/dev/null 2>&1; then
import sys
from importlib.metadata import version
assert version("vllm") == sys.argv[1]
import kvledger.tap  # noqa: F401  (the editable install knows the tap package)
import vllm.distributed.kv_transfer.kv_connector.v1.base  # noqa: F401
import vllm.v1.core.sched.scheduler  # noqa: F401
PYEOF
  echo "vllm $VLLM_VERSION already installed in $VENV"
  exit 0
fi

t0=$(date +%s)
# The CPU torch the project pins (pyproject) must already be there: never let pip pick another.
"$PY" -c 'import torch, sys; sys.exit(0 if "+cpu" in torch.__version__ or not torch.cuda.is_available() else 1)'
"$PIP" install -q --no-deps "vllm==$VLLM_VERSION" "nixl==$NIXL_VERSION" "xgrammar==$XGRAMMAR_VERSION"
"$PIP" install -q -e '.[vllm]'
"$PY" -c 'import torch; assert torch.__version__.startswith("2.13.0"), torch.__version__'
echo "vllm $VLLM_VERSION light install into $VENV: $(( $(date +%s) - t0 )) s, $(du -sh "$VENV" | cut -f1)"
