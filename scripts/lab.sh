#!/usr/bin/env bash
# The main job: open the sfn-teach notebooks in JupyterLab (installing what is missing first).
# Extra arguments go to `jupyter lab`, e.g. scripts/lab.sh --no-browser --port 8899
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
# shellcheck disable=SC1091
. scripts/setup.sh
# How torch's CPU threads wait on a busy machine (sfn_teach.cpu): in every kernel's environment
# from its start, whatever a notebook imports first. Your own OMP_*/GOMP_*/KMP_* settings win.
eval "$(python -c 'import sfn_teach.cpu as cpu; print(cpu.shell_exports(), end="")')"
extra=()
[ "$(id -u)" = 0 ] && extra+=(--allow-root)
# Serve the repository (so that jupytext finds jupytext.toml and benchmarks/ are at hand) and open
# the notebooks folder.
exec jupyter lab --ServerApp.root_dir=. --ServerApp.default_url=/lab/tree/notebooks \
    "${extra[@]}" "$@"
