#!/usr/bin/env bash
# Create .venv (if missing) and install sfn-teach with its dev tools and Ray Tune into it.
# Sourced by scripts/lab.sh and scripts/test.sh; safe to run again (installs only what is missing).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

PYTHON=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
    "$PYTHON" -c 'import sys; sys.exit(sys.version_info < (3, 10))' \
        || { echo "sfn-teach needs Python >= 3.10 (found $("$PYTHON" --version))" >&2; exit 1; }
    "$PYTHON" -m venv .venv
fi
# shellcheck disable=SC1091
. .venv/bin/activate

pip_quiet() { python -m pip install --disable-pip-version-check -q "$@"; }

# torch first, pinned: on the project's CPU machines torch==2.13.0 is the local CPU build, whereas an
# unpinned torch pulls a multi-GB CUDA build. Set SFN_TEACH_TORCH to choose another spec.
if ! python -c 'import torch' 2>/dev/null; then
    echo "installing ${SFN_TEACH_TORCH:-torch==2.13.0} ..."
    pip_quiet "${SFN_TEACH_TORCH:-torch==2.13.0}"
fi
# The tune extra (Ray Tune) too: the test suite runs `bench tune`.
if ! python -c 'import sfn_teach, pytest, nbclient, playwright, mpmath, ray.tune' 2>/dev/null \
        || [ pyproject.toml -nt .venv/.sfn-teach-installed ]; then
    echo "installing sfn-teach and its dependencies into .venv ..."
    pip_quiet -e ".[dev,tune]"
    touch .venv/.sfn-teach-installed
fi
# What was installed, for the log: with the default torch spec, the CPU build and no CUDA wheels
# (a dependency that pulled torchvision or a CUDA torch would replace it by a multi-GB build).
python - <<'PY'
import os
from importlib.metadata import distributions

import torch

cuda = sorted(d.metadata["Name"] for d in distributions()
              if d.metadata["Name"].lower().startswith(("nvidia-", "cuda-", "torchvision", "triton")))
print(f"torch {torch.__version__} (CUDA build: {torch.version.cuda or 'no'}); "
      f"CUDA wheels or torchvision installed: {', '.join(cuda) or 'none'}")
if "SFN_TEACH_TORCH" not in os.environ and (torch.version.cuda or cuda):
    raise SystemExit("a CUDA build of torch or CUDA wheels were installed on a CPU setup: "
                     "a dependency pulled them (set SFN_TEACH_TORCH to choose a torch build)")
PY

# JupyterLab settings for a classroom, in this environment only: no "get notified about news"
# prompt, no update checks.
overrides=.venv/share/jupyter/lab/settings/overrides.json
if [ ! -f "$overrides" ]; then
    mkdir -p "$(dirname "$overrides")"
    cat > "$overrides" <<'JSON'
{
  "@jupyterlab/apputils-extension:notification": {"fetchNews": "false", "checkForUpdates": false}
}
JSON
fi
