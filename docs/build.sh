#!/usr/bin/env bash
# Build the HTML site into docs/_build/html, with every warning an error.
# CI runs this; it needs the "docs" extra installed in the active Python:
#   pip install -c constraints.txt -e ".[docs]"
# and uses the sphinx-build found first on PATH.
set -euo pipefail

docs=$(cd "$(dirname "$0")" && pwd)
cd "$docs/.."

# The gallery executes the examples in this process; they must not look for
# a display.
export MPLBACKEND=Agg
# The networks in the examples are small: one thread runs them as fast as
# two, and on a busy machine extra threads stall (a 50-epoch fit took 5 times
# longer with 2 threads than with 1 while other jobs ran).
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-1}"

# Always from scratch: an incremental build stays silent about pages it does
# not re-read, so -W would miss their warnings, and a removed object or
# example would linger in the site.
rm -rf docs/_build docs/auto_examples docs/gen_modules

sphinx-build -W --keep-going -b html docs docs/_build/html "$@"
