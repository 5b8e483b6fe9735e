#!/bin/sh
# Instructions per request of the lifecycle core (bench_core's workload), counted by callgrind:
# repeatable on a loaded machine where wall and CPU times are not. Two runs of different sizes;
# their difference divided by the difference in requests is the per-request cost, the
# interpreter's start-up, imports and warm-up excluded.
#
#   bench/bench_core_instructions.sh [SMALL] [LARGE] [noop|cnoop|ledger]
#
# ledger: the real Ledger's emit in this process (its shipper thread's marshalling included;
# the writer process is a child callgrind does not follow). cnoop: a builtin that does nothing
# with its arguments (``"".format``), the floor under the Python no-op's frame and dict.
set -eu
SMALL=${1:-200}
LARGE=${2:-1200}
EMIT=${3:-noop}
HERE=$(cd "$(dirname "$0")" && pwd)
PY=${PYTHON:-$HERE/../.venv/bin/python}
count() {
    out=$(mktemp)
    valgrind --tool=callgrind --callgrind-out-file=/dev/null "$PY" "$HERE/bench_core.py" \
        --once "$1" --emit "$EMIT" >/dev/null 2>"$out"
    sed -n 's/.*Collected : \([0-9]*\).*/\1/p' "$out"
    rm -f "$out"
}
a=$(count "$SMALL")
b=$(count "$LARGE")
echo "emit=$EMIT instructions per request: $(( (b - a) / (LARGE - SMALL) )) ($SMALL: $a, $LARGE: $b)"
