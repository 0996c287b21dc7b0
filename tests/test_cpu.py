"""sfn_teach.cpu: the OpenMP wait policy reaches torch's runtime when sfn_teach comes first, the
user's settings win, and thread budgets share the cores."""

from sfn_teach.cpu import (
    OPT_OUT,
    USER_WAIT_VARIABLES,
    WAIT_POLICY,
    apply_wait_policy,
    thread_budget,
)

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def clean_environment(**extra):
    """This process's environment without any wait setting (and without the policy's marker)."""
    names = (*USER_WAIT_VARIABLES, OPT_OUT, "SFN_TEACH_CPU_POLICY_SET")
    environ = {k: v for k, v in os.environ.items() if k not in names}
    return {**environ, "PYTHONPATH": str(ROOT), **extra}


def python(code, **extra):
    done = subprocess.run([sys.executable, "-c", code], env=clean_environment(**extra),
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_the_policy_is_set_where_nobody_decided():
    environ = {"PATH": "/bin"}
    assert apply_wait_policy(environ) == "sfn-teach"
    assert environ == {"PATH": "/bin", **WAIT_POLICY, "SFN_TEACH_CPU_POLICY_SET": "1"}
    assert apply_wait_policy(dict(environ)) == "sfn-teach"  # a child process inherits it


@pytest.mark.parametrize("name", USER_WAIT_VARIABLES)
def test_a_users_wait_setting_wins(name):
    environ = {name: "12345"}
    assert apply_wait_policy(environ) == "user"
    assert environ == {name: "12345"}
    # also in a child of a process that had set the policy: the user changed one variable
    inherited = {**WAIT_POLICY, "SFN_TEACH_CPU_POLICY_SET": "1", name: "7"}
    assert apply_wait_policy(dict(inherited)) == "user"


def test_torch_defaults_on_request():
    environ = {OPT_OUT: "torch"}
    assert apply_wait_policy(environ) == "torch"
    assert environ == {OPT_OUT: "torch"}


def test_status_says_what_is_in_effect():
    status = "import sfn_teach.cpu as c, torch; print(c.status())"
    assert "short spin (GOMP_SPINCOUNT=1000)" in python(status)
    assert "as you set them (OMP_WAIT_POLICY=PASSIVE)" in python(status,
                                                                  OMP_WAIT_POLICY="PASSIVE")
    assert "torch's defaults (SFN_TEACH_CPU_POLICY=torch)" in python(status,
                                                                     SFN_TEACH_CPU_POLICY="torch")
    late = python("import torch, sfn_teach.cpu as c; print(c.status())")
    assert "because torch was imported before sfn_teach" in late
    # a shell that evaluated the exports (scripts/lab.sh): in effect whatever comes first
    exports = python("import sfn_teach.cpu as c; print(c.shell_exports(), end='')")
    assert exports.splitlines() == [f"export {k}={v}" for k, v in WAIT_POLICY.items()] + [
        "export SFN_TEACH_CPU_POLICY_SET=1"]
    inherited = dict(line.removeprefix("export ").split("=") for line in exports.splitlines())
    assert "short spin" in python("import torch, sfn_teach.cpu as c; print(c.status())",
                                  **inherited)
    assert python("import sfn_teach.cpu as c; print(c.shell_exports(), end='')",
                  GOMP_SPINCOUNT="5") == ""


SPIN_PROBE = """
import sys
if sys.argv[-1] == "sfn_teach first":
    import sfn_teach
import time, torch
torch.set_num_threads(2)
x = torch.ones(2_000_000)          # large enough for torch to use both threads
x.add_(1)
start = time.process_time()
for _ in range(100):                # a parallel operation, then 2 ms of idleness
    x.add_(1)
    time.sleep(0.002)
print(time.process_time() - start)  # CPU seconds of all threads
"""


def test_the_policy_reaches_torchs_openmp_runtime():
    """After each parallel operation torch's worker thread spins before it sleeps: for a few
    milliseconds with torch's defaults, for tens of microseconds with the policy. So 100
    operations with pauses cost the process far less CPU time with sfn_teach imported first."""
    def cpu_seconds(order):
        done = subprocess.run([sys.executable, "-c", SPIN_PROBE, order], env=clean_environment(),
                              capture_output=True, text=True, timeout=120)
        assert done.returncode == 0, done.stderr
        return float(done.stdout)

    polite = min(cpu_seconds("sfn_teach first") for _ in range(2))
    spinning = max(cpu_seconds("torch first") for _ in range(2))
    assert polite < 0.5 * spinning, (polite, spinning)


def test_thread_budgets_share_the_cores():
    assert thread_budget(1, cores=8) == 8
    assert thread_budget(2, cores=8) == 4
    assert thread_budget(3, cores=8) == 2
    assert thread_budget(4, cores=2) == 1
    assert thread_budget(1) == len(os.sched_getaffinity(0))
    for bad in (0, -1, 1.5, True, "2"):
        with pytest.raises(ValueError, match="local_processes must be an int >= 1"):
            thread_budget(bad)
