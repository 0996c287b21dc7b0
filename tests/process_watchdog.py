"""The processes a test starts end when the test process ends, however it ends (SIGKILL too).

Every process a test starts (a JupyterLab server, and what that starts: kernels, a shell
script's children) carries ``MARKER_VARIABLE=<marker>`` in its environment, which children
inherit: :func:`processes_with_marker` finds them by it. Before it starts them, the test starts
this script as a watchdog, with a pipe as its standard input whose only write end the test
process holds::

    python tests/process_watchdog.py MARKER

The watchdog reads the pipe until it closes. A test that stopped its processes itself writes
:data:`RELEASE` first, and the watchdog exits. A pipe that closes without it means that the test
process ended (the operating system closes the ends of a dead process, even one killed by
SIGKILL): the watchdog then sends SIGTERM to every live process that carries the marker (a
JupyterLab server shuts its kernels down on it), and SIGKILL to those left after a grace period.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import sys
import time
from pathlib import Path

MARKER_VARIABLE = "SFN_TEACH_BROWSER_TEST"
#: what a test writes to the watchdog once it has stopped its processes itself
RELEASE = b"release"
GRACE_S = 5.0


def processes_with_marker(prefix: str) -> dict[int, str]:
    """The live processes whose ``MARKER_VARIABLE`` starts with ``prefix``: pid → command line."""
    needle = f"{MARKER_VARIABLE}={prefix}".encode()
    found = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            variables = (entry / "environ").read_bytes().split(b"\0")
            if not any(variable.startswith(needle) for variable in variables):
                continue
            status = (entry / "status").read_text()
            if re.search(r"^State:\s+Z", status, re.M):
                continue  # a zombie has exited; only its parent's wait() is missing
            found[int(entry.name)] = (
                (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            )
        except OSError:  # gone meanwhile, or not ours to read
            continue
    return found


def signal_processes(marker: str, signum: int):
    """Send ``signum`` to every live process that carries ``marker``."""
    for pid in processes_with_marker(marker):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signum)


def end_processes(marker: str, grace: float = GRACE_S):
    """SIGTERM every process carrying ``marker``, and SIGKILL those left after ``grace`` s."""
    signal_processes(marker, signal.SIGTERM)
    deadline = time.monotonic() + grace
    while processes_with_marker(marker) and time.monotonic() < deadline:
        time.sleep(0.1)
    signal_processes(marker, signal.SIGKILL)


def main(marker: str):
    if sys.stdin.buffer.read() != RELEASE:  # read() returns when the pipe closes
        end_processes(marker)


if __name__ == "__main__":
    main(sys.argv[1])
