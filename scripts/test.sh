#!/usr/bin/env bash
# The whole test suite: lint, unit and property tests, notebook execution and the browser tests
# (installing what is missing first). Extra arguments go to pytest, e.g. scripts/test.sh -m "not browser"
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
# shellcheck disable=SC1091
. scripts/setup.sh

# The browser tests drive Debian's Chromium (never a downloaded browser).
if [ ! -x /usr/bin/chromium ]; then
    sudo=()
    [ "$(id -u)" = 0 ] || sudo=(sudo)
    echo "installing chromium for the browser tests ..."
    "${sudo[@]}" apt-get update -qq \
        && "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null \
        || echo "could not install chromium: the browser tests will fail and say so" >&2
fi

ruff check .
python -m pytest "$@"
