#!/usr/bin/env bash
# Make a bare GPU host (the device machine: its own python3 with CUDA torch and Triton, no
# network) able to run kvledger's GPU tests and benches from a copy of this tree.
#
# Here, first (this machine reaches PyPI; the GPU host's python is 3.12):
#   pip download --no-deps --only-binary=:all: --python-version 3.12 \
#       --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 \
#       -d .whl nixl-cu13==1.5.1 sqlalchemy tqdm
# (.whl/ is git-ignored: carry it, with `carry: [".whl"]`; duckdb is left out: the benches and
# GPU tests do not import it, and with it the carried tree passes the 64 MiB limit.)
# There:  source scripts/device-prep.sh   -> kvledger importable, PYTHONPATH exported.
set -euo pipefail
python3 -m pip install -q --no-deps --no-index .whl/*.whl
mkdir -p /tmp/kvpk
ln -sfn "$PWD" /tmp/kvpk/kvledger
inc=$(python3 -c "import sysconfig; print(sysconfig.get_paths()['include'])")
ext=$(python3 -c "import sysconfig; print(sysconfig.get_config_var('EXT_SUFFIX'))")
gcc -shared -fPIC -O3 -std=c11 -I"$inc" ledger/_fastenc.c -o "ledger/_fastenc$ext"
export PYTHONPATH=/tmp/kvpk:$PWD
python3 -c "import kvledger.ledger._fastenc, nixl_cu13, torch; print('kvledger ready,', torch.cuda.get_device_name(0))"
set +euo pipefail
