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
    # No widget state in the HTML: every panel is then shown by the PNG of its figure that it
    # leaves in its output (a live widget would need a kernel, or JavaScript from a CDN).
    jupyter nbconvert --to html --execute --ExecutePreprocessor.timeout=1800 \
        --ExecutePreprocessor.store_widget_state=False --output-dir rendered "$notebook"
done
echo "open rendered/*.html in a browser"
