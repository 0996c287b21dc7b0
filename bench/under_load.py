"""How much slower sfn-teach gets when other programs keep the CPU busy, with and without its
CPU policy (:mod:`sfn_teach.cpu`).

    python bench/under_load.py [--repeats N] [--workloads quick,smoke,notebook02,callback]

Four workloads, each in a fresh process, as a user meets them:

- ``quick``: ``python -m sfn_teach.bench run benchmarks/digits_quick.toml`` (SGD, Adam and the
  adaptive series on the digits MLP, 3 seeds), the wall-clock of the whole command;
- ``smoke``: ``python -m sfn_teach.bench run benchmarks/cifar10_smoke.toml`` (ResNet-18 of
  width 4 on a generated CIFAR-10 archive, four optimisers), the whole command;
- ``notebook02``: notebook 02 (2-D saddles) executed headless by nbclient in full mode, from
  the kernel's start to its last cell;
- ``callback``: one saddle-explorer callback (the start moves, so all six optimisers re-run and
  the figure is redrawn): the median of 10 callbacks, in milliseconds.

Each runs **idle** and **under load** — as many busy processes as the machine has cores (plain
Python spin loops, started here and always stopped) — with **sfn-teach's policy** (a short
OpenMP spin) and with **torch's default** (``SFN_TEACH_CPU_POLICY=torch``). The four variants
of a workload are interleaved, each measured ``--repeats`` times (median). The table gives the
loaded/idle ratio of each (a fair share of two cores between us and two spinners is 2×; the goal
is ≤ 2.5) and the policy's idle cost, policy idle / torch idle (goal ≤ 1.1).
"""

import argparse
import os
import platform
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
WAIT_VARIABLES = ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT", "KMP_BLOCKTIME", "SFN_TEACH_CPU_POLICY",
                  "SFN_TEACH_CPU_POLICY_SET")
POLICIES = {"sfn-teach": {}, "torch": {"SFN_TEACH_CPU_POLICY": "torch"}}

NOTEBOOK = """
import sys, time, jupytext
from nbclient import NotebookClient
notebook = jupytext.read(sys.argv[1])
client = NotebookClient(notebook, kernel_name="python3", timeout=900,
                        resources={"metadata": {"path": sys.argv[2]}})
start = time.perf_counter()
client.execute()
print(time.perf_counter() - start)
"""

CALLBACK = """
import sfn_teach
import statistics, time
from sfn_teach.toys import OPTIMIZERS
from sfn_teach.widgets import SaddleExplorer
panel = SaddleExplorer("paper", optimizers=tuple(OPTIMIZERS), steps=100, num_terms=20)
x0 = panel.start_x.value
times = []
for i in range(11):  # the first is a warm-up
    start = time.perf_counter()
    panel.start_x.value = x0 + 0.01 * (i + 1)
    times.append(time.perf_counter() - start)
print(1000 * statistics.median(times[1:]))
"""


def workloads(scratch: Path) -> dict:
    """``name -> (argv, unit, how the measurement is read)``."""
    cli = [sys.executable, "-m", "sfn_teach.bench", "run", "--quiet"]
    data = scratch / "cifar10"
    return {
        "quick": ([*cli, "benchmarks/digits_quick.toml", "--out", "{out}"], "s", "wall"),
        "smoke": ([*cli, "benchmarks/cifar10_smoke.toml", "--out", "{out}", "--data-dir",
                   str(data)], "s", "wall"),
        "notebook02": ([sys.executable, "-c", NOTEBOOK,
                        str(ROOT / "notebooks" / "02_saddles_in_2d.py"), str(ROOT / "notebooks")],
                       "s", "printed"),
        "callback": ([sys.executable, "-c", CALLBACK], "ms", "printed"),
    }


def environment(policy: str) -> dict:
    """A child's environment: no wait settings of ours or the user's, then the policy's."""
    environ = {k: v for k, v in os.environ.items() if k not in WAIT_VARIABLES}
    environ.pop("SFN_TEACH_FAST", None)
    return {**environ, "PYTHONPATH": str(ROOT), **POLICIES[policy]}


def measure(workload, policy: str, scratch: Path, timeout: float) -> float:
    argv, _, reading = workload
    out = tempfile.mkdtemp(dir=scratch)
    argv = [a.replace("{out}", out) for a in argv]
    start = time.perf_counter()
    done = subprocess.run(argv, cwd=ROOT, env=environment(policy), capture_output=True,
                          text=True, timeout=timeout)
    wall = time.perf_counter() - start
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(argv[:4])} failed ({done.returncode}):\n{done.stderr}")
    return wall if reading == "wall" else float(done.stdout.strip().splitlines()[-1])


class BackgroundLoad:
    """``count`` busy Python processes while the block runs; always stopped, even on Ctrl-C."""

    def __init__(self, count: int):
        self.count, self.processes = count, []

    def __enter__(self):
        self.processes = [subprocess.Popen([sys.executable, "-c", "while True: pass"])
                          for _ in range(self.count)]
        time.sleep(0.5)
        return self

    def __exit__(self, *exc):
        for process in self.processes:
            process.kill()
        for process in self.processes:
            process.wait()
        return False


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=3, help="measurements per variant")
    parser.add_argument("--workloads", default="quick,smoke,notebook02,callback",
                        help="comma-separated subset of quick, smoke, notebook02, callback")
    parser.add_argument("--timeout", type=float, default=900, help="s per measurement")
    args = parser.parse_args()
    cores = len(os.sched_getaffinity(0))
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # so that the load is stopped
    print(f"{platform.platform()}, {platform.processor() or platform.machine()}, {cores} "
          f"cores, Python {platform.python_version()}; load average before: "
          f"{os.getloadavg()[0]:.2f}; background load: {cores} busy processes; "
          f"median of {args.repeats}", flush=True)
    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as scratch_name:
        scratch = Path(scratch_name)
        every = workloads(scratch)
        names = args.workloads.split(",")
        unknown = set(names) - set(every)
        if unknown:
            parser.error(f"unknown workloads {sorted(unknown)}; choose from {sorted(every)}")
        measure(every["smoke"], "sfn-teach", scratch, args.timeout)  # writes the archive once
        results = {}
        for name in names:
            samples = {(p, c): [] for p in POLICIES for c in ("idle", "loaded")}
            for _ in range(args.repeats):
                for policy in POLICIES:
                    samples[policy, "idle"].append(
                        measure(every[name], policy, scratch, args.timeout))
                with BackgroundLoad(cores):
                    for policy in POLICIES:
                        samples[policy, "loaded"].append(
                            measure(every[name], policy, scratch, args.timeout))
            results[name] = {key: statistics.median(values) for key, values in samples.items()}
            row = results[name]
            print(f"  {name}: " + ", ".join(f"{p} {c} {row[p, c]:.3g}" for p, c in row),
                  flush=True)
    print()
    print("| workload | sfn-teach idle | sfn-teach loaded | loaded/idle | torch idle | "
          "torch loaded | loaded/idle | idle cost of the policy |")
    print("|---|---|---|---|---|---|---|---|")
    for name, row in results.items():
        unit = every[name][1]
        ours, theirs = row["sfn-teach", "loaded"] / row["sfn-teach", "idle"], \
            row["torch", "loaded"] / row["torch", "idle"]
        print(f"| {name} | {row['sfn-teach', 'idle']:.3g} {unit} | "
              f"{row['sfn-teach', 'loaded']:.3g} {unit} | **{ours:.2f}** | "
              f"{row['torch', 'idle']:.3g} {unit} | {row['torch', 'loaded']:.3g} {unit} | "
              f"{theirs:.2f} | {row['sfn-teach', 'idle'] / row['torch', 'idle']:.2f} |")
    print(f"\n{time.perf_counter() - started:.0f} s in all; goals: loaded/idle <= 2.5 with "
          "sfn-teach's policy, idle cost <= 1.1")
    return 0


if __name__ == "__main__":
    sys.exit(main())
