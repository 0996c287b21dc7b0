#!/usr/bin/env bash
# The main job: open the sfn-teach notebooks in JupyterLab (installing what is missing first).
# Extra arguments go to `jupyter lab`, e.g. scripts/lab.sh --no-browser --port 8899
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
# shellcheck disable=SC1091
. scripts/setup.sh
extra=()
[ "$(id -u)" = 0 ] && extra+=(--allow-root)
# Serve the repository (so that jupytext finds jupytext.toml and benchmarks/ are at hand) and open
# the notebooks folder.
exec jupyter lab --ServerApp.root_dir=. --ServerApp.default_url=/lab/tree/notebooks \
    "${extra[@]}" "$@"
