#!/usr/bin/env bash
# Render every notebook, executed, to HTML in rendered/ (git-ignored), so a newcomer can read them
# with their figures without running anything. SFN_TEACH_FAST=1 renders the quick versions.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
# shellcheck disable=SC1091
. scripts/setup.sh
mkdir -p rendered
for notebook in notebooks/[0-9][0-9]_*.ipynb; do
    echo "rendering $notebook ..."
    jupyter nbconvert --to html --execute --ExecutePreprocessor.timeout=1800 \
        --output-dir rendered "$notebook"
done
echo "open rendered/*.html in a browser"
