"""How sfn-teach shares a CPU with other programs: a short OpenMP wait, and thread budgets.

torch runs each CPU operation on a team of OpenMP threads (by default one per core). When a
team finishes, its threads *spin* (busy-wait) before they sleep, so that the next operation
starts without a wake-up: the GNU OpenMP runtime of torch's pip wheels spins for about
300,000 iterations, a few milliseconds. On an idle machine that is free speed. On a busy one
(a browser, a second kernel, CI jobs, Ray Tune trials, other students on a shared server)
it is a disaster: a spinning thread burns the time slice that the thread it waits for needs,
and every small operation can cost a whole time slice. A width-4 ResNet-18 forward pass went
from 0.044 s to 2.1 s on a 2-core machine with two busy processes beside it.

**The wait policy** (:func:`apply_wait_policy`), applied when ``sfn_teach`` is imported:

- ``GOMP_SPINCOUNT=1000`` (GNU OpenMP, torch's pip wheels): spin about a thousand iterations
  (tens of microseconds), then sleep. Long enough to catch the next operation of a busy
  training loop on an idle machine, short enough that a waiting thread gives the CPU back under
  load. ``bench/under_load.py`` measures it against torch's default, idle and under load.
- ``KMP_BLOCKTIME=1`` (LLVM and Intel OpenMP, e.g. some conda builds of torch): wait 1 ms
  instead of 200 ms before sleeping. Not measured here (the pip wheels use GNU OpenMP).

The OpenMP runtime reads these variables once, when torch is first imported, so the policy
works only if ``sfn_teach`` (or :mod:`sfn_teach.cpu`) is imported **before** ``torch``; the
notebooks, the command line, the tests and ``scripts/lab.sh`` (which exports the variables to
every kernel) see to that. Child processes (notebook kernels, Ray workers, torchrun ranks)
inherit the variables. Your own settings win: if any of ``OMP_WAIT_POLICY``,
``GOMP_SPINCOUNT`` or ``KMP_BLOCKTIME`` is set, nothing is changed, and
``SFN_TEACH_CPU_POLICY=torch`` keeps torch's defaults. :func:`status` says what is in effect.

**Thread budgets** (:func:`thread_budget`). Thread counts are never changed behind your back:
a process keeps torch's choice (or yours: ``OMP_NUM_THREADS``, ``torch.set_num_threads``, the
CLI's ``--threads``). Where sfn-teach starts several processes on one machine, each gets its
share: a Ray Tune trial as many threads as CPUs it was given (``tune.cpus_per_trial``), a
torchrun rank ``cores / local ranks`` unless ``OMP_NUM_THREADS`` is set (torchrun itself sets
it to 1 when it starts several processes). Thread counts stay fixed for a whole run because
they change the rounding of parallel reductions: the same run with 1 and 2 threads gives
different bits.
"""

import os
import sys

from .checks import integer

__all__ = [
    "OPT_OUT", "USER_WAIT_VARIABLES", "WAIT_POLICY", "apply_wait_policy", "shell_exports",
    "status", "thread_budget"
]

WAIT_POLICY = {"GOMP_SPINCOUNT": "1000", "KMP_BLOCKTIME": "1"}
"""The environment variables of the wait policy and their values (module docstring)."""

USER_WAIT_VARIABLES = ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT", "KMP_BLOCKTIME")
"""If any of these is set, the wait policy is the user's and sfn-teach changes nothing."""

OPT_OUT = "SFN_TEACH_CPU_POLICY"
"""``SFN_TEACH_CPU_POLICY=torch`` keeps torch's own OpenMP defaults."""

_MARKER = "SFN_TEACH_CPU_POLICY_SET"  # tells child processes that the policy is sfn-teach's
_state = {"policy": None, "too_late": None}


def apply_wait_policy(environ=None) -> str:
    """Put :data:`WAIT_POLICY` into ``environ`` (``os.environ``) unless the user decides.

    Returns who decides the wait policy: ``"sfn-teach"`` (set now, or inherited from a parent
    process that set it, marked by ``SFN_TEACH_CPU_POLICY_SET=1``), ``"user"`` (one of
    :data:`USER_WAIT_VARIABLES` is set otherwise; it is left alone) or ``"torch"``
    (``SFN_TEACH_CPU_POLICY=torch``). Called once when :mod:`sfn_teach` is imported; it takes
    effect in this process only if ``torch`` has not been imported yet (:func:`status`).
    """
    environ = os.environ if environ is None else environ
    waits = {name: environ[name] for name in USER_WAIT_VARIABLES if name in environ}
    inherited = environ.get(_MARKER) == "1" and waits == WAIT_POLICY
    if environ.get(OPT_OUT, "").strip().lower() == "torch":
        policy = "torch"
    elif waits:
        policy = "sfn-teach" if inherited else "user"
    else:
        environ.update(WAIT_POLICY)
        environ[_MARKER] = "1"
        policy = "sfn-teach"
    if environ is os.environ and _state["policy"] is None:
        # in effect if torch starts after this, or if the variables were there from the start
        _state.update(policy=policy, too_late="torch" in sys.modules and not inherited)
    return policy


def status() -> str:
    """One line: torch's CPU threads and which OpenMP wait policy this process runs with."""
    import torch

    threads = f"{torch.get_num_threads()} torch CPU thread{'s' * (torch.get_num_threads() > 1)}"
    policy = _state["policy"]
    if policy == "user":
        chosen = ", ".join(f"{name}={os.environ[name]}" for name in USER_WAIT_VARIABLES
                           if name in os.environ)
        return f"{threads}; OpenMP waits as you set them ({chosen})"
    if policy == "torch" or policy is None:
        return f"{threads}; OpenMP waits: torch's defaults ({OPT_OUT}=torch)"
    if _state["too_late"]:
        return (f"{threads}; OpenMP waits: torch's defaults, because torch was imported before "
                "sfn_teach (import sfn_teach first to wait politely on a busy machine)")
    return f"{threads}; OpenMP waits: short spin (GOMP_SPINCOUNT={WAIT_POLICY['GOMP_SPINCOUNT']})"


def thread_budget(local_processes: int, cores: int | None = None) -> int:
    """Threads for one of ``local_processes`` processes sharing this machine's cores.

    ``max(1, cores // local_processes)``, where ``cores`` defaults to the CPUs this process may
    run on (``os.sched_getaffinity``).
    """
    integer("local_processes", local_processes, 1)
    if cores is None:
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (
            os.cpu_count() or 1)
    return max(1, cores // local_processes)


def shell_exports() -> str:
    """``export NAME=VALUE`` lines that give a shell this process's wait policy if it is
    sfn-teach's (nothing if the user or torch decides). ``scripts/lab.sh`` evaluates them so
    that every notebook kernel starts with the policy, whatever it imports first."""
    if _state["policy"] != "sfn-teach":
        return ""
    return "".join(f"export {name}={value}\n"
                   for name, value in {**WAIT_POLICY, _MARKER: "1"}.items())
