"""How long the explorers' callbacks take in the kernel (target: median ≤ 30 ms).

    python bench/widget_callbacks.py [--repeats N] [--threads T] [--profile]

A callback is what runs in the kernel when a control's value arrives: the trajectories (or
filter curves) are computed and the bqplot curves are given their new data, which ipywidgets
serialises into update messages (counted here; sending them and drawing in the browser are
not). No PNG is made per callback: the static figure is drawn only when a panel is displayed.

For the :class:`~sfn_teach.widgets.SaddleExplorer` on the paper's toy and on Rosenbrock, with
all six optimisers ticked and 100 steps, it times the callback of a control set in code (as a
browser would), for ``K`` = 5, 20 and 50:

- ``series``: what moving ``K``, ``V``, ``r`` or ``λ``'s series input costs: only series SFN
  re-runs (the other trajectories come from the cache). Setting ``K`` back and forth would hit
  the cache, so ``V`` is nudged by a relative 1e-6 each time instead (an input of series SFN
  only) at fixed ``K``;
- ``start``: ``x₀`` moves a little every time, so all six optimisers re-run (the worst case);
- ``cached``: an update whose trajectories all come from the cache (the curves' data alone).

For the :class:`~sfn_teach.widgets.FilterExplorer` it times ``K`` (alternating ``K − 1``, ``K``).
Medians of ``--repeats`` callbacks each (default 20), after one warm-up. ``--profile``
prints the most expensive functions of the ``start`` callback on Rosenbrock at ``K = 50``.
"""


import argparse
import cProfile
import os
import platform
import pstats
import statistics
import time

import torch

from sfn_teach.toys import OPTIMIZERS
from sfn_teach.widgets import FilterExplorer, SaddleExplorer


def median_ms(callback, values, repeats):
    """Set each value in turn (cycling) through ``callback`` and return the median in ms."""
    callback(values[-1])  # warm-up (and the state the first timed change starts from)
    times = []
    for i in range(repeats):
        start = time.perf_counter()
        callback(values[i % len(values)])
        times.append(time.perf_counter() - start)
    return 1000 * statistics.median(times)


def saddle_panel(problem, num_terms):
    """The explorer with every optimiser ticked and 100 steps."""
    return SaddleExplorer(problem, optimizers=tuple(OPTIMIZERS), steps=100, num_terms=num_terms)


def set_value(control):
    def callback(value):
        control.value = value

    return callback


def saddle_rows(problem, num_terms, repeats):
    panel = saddle_panel(problem, num_terms)
    x0, scale = panel.start_x.value, panel.scale.value
    k_ms = median_ms(
        set_value(panel.scale), [scale * (1 + 1e-6 * (i + 1)) for i in range(repeats + 1)], repeats
    )
    start_ms = median_ms(
        set_value(panel.start_x), [x0 + 1e-3 * (i + 1) for i in range(repeats + 1)], repeats
    )
    draw_ms = median_ms(lambda _: panel.update(), [None], repeats)
    stopped = [t.label for t in panel.trajectories.values() if t.stopped]
    return k_ms, start_ms, draw_ms, stopped


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--profile", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {platform.processor() or platform.machine()}, "
          f"{args.threads} threads, median of {args.repeats} callbacks (ms), load average "
          f"{os.getloadavg()[0]:.1f} (other work on the machine inflates every number)")

    print("\nSaddleExplorer, 100 steps, six optimisers")
    print(f"{'problem':<12}{'K':>4}{'series':>10}{'start change':>14}{'cached':>8}  stopped")
    for problem in ("paper", "rosenbrock"):
        for num_terms in (5, 20, 50):
            k_ms, start_ms, draw_ms, stopped = saddle_rows(problem, num_terms, args.repeats)
            print(f"{problem:<12}{num_terms:>4}{k_ms:>10.1f}{start_ms:>14.1f}{draw_ms:>8.1f}  "
                  f"{len(stopped)} of 6 stopped early")

    print("\nFilterExplorer")
    panel = FilterExplorer()
    for num_terms in (5, 20, 50):
        ms = median_ms(set_value(panel.num_terms), [num_terms - 1, num_terms], args.repeats)
        print(f"K = {num_terms:>3}: {ms:7.1f}")

    if args.profile:
        panel = saddle_panel("rosenbrock", 50)
        profile = cProfile.Profile()
        profile.enable()
        for i in range(4):
            panel.start_x.value += 1e-3 * (i + 1)
        profile.disable()
        pstats.Stats(profile).sort_stats("cumulative").print_stats(15)


if __name__ == "__main__":
    main()
