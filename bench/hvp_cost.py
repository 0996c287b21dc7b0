"""What a Hessian-vector product costs, in gradients, on the CPU.

    python bench/hvp_cost.py [--repeats N] [--quick] [--threads T]

For an MLP 784-256-256-10 at batch 256 and the CIFAR ResNet-18 at batch 32 it times, side by
side (variants interleaved within every repeat, warm-up runs excluded, medians reported):

- one gradient ``g`` (forward + backward), the unit of cost;
- one ``Hv`` from scratch per backend of :class:`sfn_teach.hvp.ModelHVP` (including building
  the forward/backward pass; for ``linearize`` the set-up plus the first product, one sample);
- the marginal ``Hv`` once the work is shared: a further product on the retained
  double-backward graph, and a product of the ``linearize`` trace after its set-up;
- one step of :class:`sfn_teach.optim.SeriesSFN` (K = 5, r = 2), compared with the cost model
  ``1 + 2(K−1)·c_HVP`` gradients, where ``c_HVP`` is the marginal double-backward ratio.

Every time is reported as a ratio to the gradient measured in the same run.
"""

import argparse
import copy
import os
import platform
import statistics
import sys
import time

import torch
import torch.nn.functional as F

from sfn_teach.hvp import ModelHVP
from sfn_teach.models import MLP, count_parameters, resnet18_cifar

try:
    from sfn_teach.optim import SeriesSFN
except ImportError:  # the optimiser is optional for the HVP measurements
    SeriesSFN = None

NUM_TERMS = 5
SFN_SETTINGS = dict(
    lr=1.0,
    num_terms=NUM_TERMS,
    acceleration_order=2,
    damping=1e-3,
    scale_rule="fixed",
    scale=1e4,
)


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=None, help="timed repeats (default 5)")
    parser.add_argument(
        "--quick", action="store_true", help="2 repeats, no linearize on ResNet-18 (~40 s)"
    )
    parser.add_argument("--threads", type=int, default=2, help="torch.set_num_threads (2)")
    args = parser.parse_args(argv)
    if args.repeats is None:
        args.repeats = 2 if args.quick else 5
    if args.repeats < 1 or args.threads < 1:
        parser.error(f"--repeats and --threads must be >= 1, got {args.repeats}, {args.threads}")
    return args


def problems(quick):
    """``(name, model, inputs, targets, calls per sample, run linearize)`` for each network."""
    generator = torch.Generator().manual_seed(0)
    mlp = MLP((784, 256, 256, 10), activation="tanh")
    resnet = resnet18_cifar()
    return [
        (
            "MLP 784-256-256-10 (tanh), batch 256",
            mlp,
            torch.randn(256, 784, generator=generator),
            torch.randint(0, 10, (256,), generator=generator),
            10,
            True,
        ),
        (
            "ResNet-18 (CIFAR, width 64, BatchNorm train), batch 32",
            resnet,
            torch.randn(32, 3, 32, 32, generator=generator),
            torch.randint(0, 10, (32,), generator=generator),
            1,
            not quick,
        ),
    ]


def seconds(fn, number=1):
    """Wall-clock seconds per call of ``fn``, averaged over ``number`` back-to-back calls."""
    start = time.perf_counter()
    for _ in range(number):
        fn()
    return (time.perf_counter() - start) / number


def variants(model, inputs, targets):
    """The timed callables of one network, and the operators they keep alive."""
    params = [p for p in model.parameters() if p.requires_grad]
    v = torch.randn(sum(p.numel() for p in params))

    def gradient():
        torch.autograd.grad(F.cross_entropy(model(inputs), targets), params)

    def from_scratch(backend):
        return lambda: ModelHVP(model, F.cross_entropy, inputs, targets, backend).matvec(v)

    retained = ModelHVP(model, F.cross_entropy, inputs, targets, "double-backward")
    timed = {
        "gradient (forward + backward)": gradient,
        "HVP from scratch, double-backward": from_scratch("double-backward"),
        "HVP from scratch, forward-over-reverse": from_scratch("forward-over-reverse"),
        "marginal HVP, double-backward (retained graph)": lambda: retained.matvec(v),
    }
    return timed, v


def linearize_variant(model, inputs, targets, v):
    """Set-up seconds, first-product seconds, and the marginal-product callable of linearize.

    One untimed set-up first, so that one-off costs (imports, tracer caches) are excluded.
    """

    def set_up():
        return ModelHVP(model, F.cross_entropy, inputs, targets, "linearize")

    set_up().matvec(v)
    start = time.perf_counter()
    operator = set_up()
    set_up_seconds = time.perf_counter() - start
    first = seconds(lambda: operator.matvec(v))
    return set_up_seconds, first, lambda: operator.matvec(v)


def sfn_step_variant(model, inputs, targets):
    """One ``SeriesSFN`` step on a copy of ``model`` (its in-place update must not invalidate
    the retained graphs built on the original), and the optimiser for its ``stats``."""
    copy_of_model = copy.deepcopy(model)
    optimizer = SeriesSFN(copy_of_model.parameters(), **SFN_SETTINGS)

    def closure():
        return F.cross_entropy(copy_of_model(inputs), targets)

    return (lambda: optimizer.step(closure)), optimizer


def measure(model, inputs, targets, number, with_linearize, repeats):
    """Median seconds per variant (interleaved repeats) plus linearize's one-off samples."""
    timed, v = variants(model, inputs, targets)
    optimizer = None
    if SeriesSFN is not None:
        timed["SeriesSFN step"], optimizer = sfn_step_variant(model, inputs, targets)
    once = {}
    if with_linearize:
        set_up, first, timed["marginal HVP, linearize (after set-up)"] = linearize_variant(
            model, inputs, targets, v
        )
        once = {
            "linearize set-up (1 sample after a warm-up)": set_up,
            "HVP from scratch, linearize (set-up + 1st product, 1 sample)": set_up + first,
        }
    for fn in timed.values():  # warm-up, not timed
        fn()
    samples = {name: [] for name in timed}
    names = list(timed)
    for r in range(repeats):
        for name in names[r % len(names) :] + names[: r % len(names)]:  # rotate the order
            samples[name].append(seconds(timed[name], number))
    medians = {name: statistics.median(times) for name, times in samples.items()}
    return medians, samples, once, optimizer


def print_table(title, medians, samples, once):
    unit = medians["gradient (forward + backward)"]
    print(f"\n{title}")
    print(f"  {'variant':<62} {'median [s]':>11} {'min-max [s]':>17} {'x gradient':>11}")
    rows = [
        (name, medians[name], f"{min(samples[name]):.4f}-{max(samples[name]):.4f}")
        for name in medians
        if name != "SeriesSFN step"
    ]
    rows += [(name, value, "") for name, value in once.items()]
    for name, value, spread in rows:
        print(f"  {name:<62} {value:>11.4f} {spread:>17} {value / unit:>11.2f}")


def print_sfn_section(title, medians, optimizer):
    print(f"\n  SeriesSFN step: {title}")
    if optimizer is None:
        print("    SeriesSFN not available (sfn_teach.optim could not be imported)")
        return
    unit = medians["gradient (forward + backward)"]
    c_hvp = medians["marginal HVP, double-backward (retained graph)"] / unit
    measured = medians["SeriesSFN step"] / unit
    model = 1 + 2 * (NUM_TERMS - 1) * c_hvp
    settings = ", ".join(f"{k}={v}" for k, v in SFN_SETTINGS.items())
    stats = optimizer.stats
    print(f"    settings: {settings}")
    print(f"    HVPs per step: {stats.get('num_hvps')}, last step skipped: {stats.get('skipped')}")
    print(f"    measured step            {medians['SeriesSFN step']:.4f} s = {measured:.2f} g")
    print(f"    model 1 + 2(K-1)·c_HVP   1 + {2 * (NUM_TERMS - 1)}·{c_hvp:.2f} = {model:.2f} g")
    print(f"    measured / model         {measured / model:.2f}")


def cpu_name():
    try:
        with open("/proc/cpuinfo") as info:
            for line in info:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def main(argv=None):
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    print("HVP cost in gradient-equivalents (medians of interleaved repeats, warm-up excluded)")
    print(f"command: {' '.join([sys.executable.rsplit('/', 1)[-1]] + sys.argv)}")
    print(
        f"device: cpu ({cpu_name()}), torch {torch.__version__}, threads "
        f"{torch.get_num_threads()}, repeats {args.repeats}, float32, load average at the start "
        f"{os.getloadavg()}"
    )
    results = []
    for name, model, inputs, targets, number, with_linearize in problems(args.quick):
        model.train()
        title = f"{name}, {count_parameters(model):,} parameters"
        if number > 1:
            title += f" (each sample averages {number} calls)"
        medians, samples, once, optimizer = measure(
            model, inputs, targets, number, with_linearize, args.repeats
        )
        if not with_linearize:
            title += "; linearize skipped (--quick)"
        print_table(title, medians, samples, once)
        results.append((name, medians, optimizer))
    print("\nSeriesSFN step, in gradients g, against the cost model")
    for name, medians, optimizer in results:
        print_sfn_section(name, medians, optimizer)
    print(
        f"\nload average (1, 5, 15 min) at the end: {os.getloadavg()}; on {os.cpu_count()} CPUs a"
    )
    print("load above the thread count means other processes shared the cores (see min-max).")


if __name__ == "__main__":
    main()
