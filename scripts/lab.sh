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
# the notebooks folder: JupyterLab, which starts the server, sets the landing page from its own
# default_url (a ServerApp.default_url is overwritten by it).
# One entry per notebook in the file browser, NAME.ipynb: its paired NAME.py (jupytext) is left out
# of the listings (besides jupyter_server's own hidden patterns), not out of reach, and saving
# NAME.ipynb still updates it. Plain `jupyter lab` lists both.
hidden=$(python -c 'from jupyter_server.services.contents.manager import ContentsManager
print(ContentsManager.hide_globs.default() + ["[0-9][0-9]_*.py"])')
exec jupyter lab --ServerApp.root_dir=. --LabApp.default_url=/lab/tree/notebooks \
    --ContentsManager.hide_globs="$hidden" "${extra[@]}" "$@"
