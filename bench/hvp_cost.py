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
GRADIENT = "gradient (forward + backward)"
MARGINAL = "marginal HVP, double-backward (retained graph)"
STEP = "SeriesSFN step (see below)"
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
        GRADIENT: gradient,
        "HVP from scratch, double-backward": from_scratch("double-backward"),
        "HVP from scratch, forward-over-reverse": from_scratch("forward-over-reverse"),
        MARGINAL: lambda: retained.matvec(v),
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
    """Seconds per sample of each variant (interleaved repeats), linearize's one-off samples."""
    timed, v = variants(model, inputs, targets)
    optimizer = None
    if SeriesSFN is not None:
        timed[STEP], optimizer = sfn_step_variant(model, inputs, targets)
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
    return samples, once, optimizer


def print_table(title, samples, once):
    """Seconds per variant, and ratios to the gradient by medians and by minima.

    Other processes on the machine only ever add time, so the minima are the better estimate of
    the uncontended cost when the load is high; with a quiet machine the two agree.
    """
    median = {name: statistics.median(times) for name, times in samples.items()}
    fastest = {name: min(times) for name, times in samples.items()}
    print(f"\n{title}")
    print(
        f"  {'variant':<62} {'median [s]':>10} {'min [s]':>9} {'max [s]':>9} "
        f"{'x g median':>10} {'x g min':>8}"
    )
    rows = [(name, median[name], fastest[name], max(samples[name])) for name in samples]
    rows += [(name, value, value, None) for name, value in once.items()]
    for name, mid, low, high in rows:
        spread = f"{low:>9.4f} {high:>9.4f}" if high is not None else f"{'':>9} {'':>9}"
        print(
            f"  {name:<62} {mid:>10.4f} {spread} {mid / median[GRADIENT]:>10.2f} "
            f"{low / fastest[GRADIENT]:>8.2f}"
        )


def print_sfn_section(title, samples, optimizer):
    """The measured step against ``1 + 2(K−1)·c_HVP``, ``c_HVP`` the marginal HVP ratio."""
    print(f"\n  {title}")
    if optimizer is None:
        print("    SeriesSFN not available (sfn_teach.optim could not be imported)")
        return
    print(f"    settings: {', '.join(f'{k}={v}' for k, v in SFN_SETTINGS.items())}")
    stats = optimizer.stats
    print(f"    HVPs per step: {stats.get('num_hvps')}, last step skipped: {stats.get('skipped')}")
    for label, statistic in (("medians", statistics.median), ("minima", min)):
        unit = statistic(samples[GRADIENT])
        c_hvp = statistic(samples[MARGINAL]) / unit
        step = statistic(samples[STEP])
        model = 1 + 2 * (NUM_TERMS - 1) * c_hvp
        print(
            f"    by {label}: step {step:.4f} s = {step / unit:.2f} g; model 1 + "
            f"{2 * (NUM_TERMS - 1)}·{c_hvp:.2f} = {model:.2f} g; measured / model "
            f"{step / unit / model:.2f}"
        )


def cpu_name():
    try:
        with open("/proc/cpuinfo") as info:
            for line in info:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def load_average():
    return ", ".join(f"{load:.2f}" for load in os.getloadavg())


def main(argv=None):
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    print("HVP cost in gradient-equivalents g (interleaved repeats, warm-up excluded)")
    print(f"command: {' '.join([sys.executable.rsplit('/', 1)[-1]] + sys.argv)}")
    print(
        f"device: cpu ({cpu_name()}, {os.cpu_count()} CPUs), torch {torch.__version__}, threads "
        f"{torch.get_num_threads()}, repeats {args.repeats}, float32"
    )
    print(f"load average (1, 5, 15 min) at the start: {load_average()}")
    results = []
    for name, model, inputs, targets, number, with_linearize in problems(args.quick):
        model.train()
        title = f"{name}, {count_parameters(model):,} parameters"
        if number > 1:
            title += f" (each sample averages {number} calls)"
        if not with_linearize:
            title += "; linearize skipped (--quick)"
        samples, once, optimizer = measure(
            model, inputs, targets, number, with_linearize, args.repeats
        )
        print_table(title, samples, once)
        results.append((name, samples, optimizer))
    print(
        f"\nSeriesSFN step in gradients g, against the cost model 1 + 2(K-1)·c_HVP, K = {NUM_TERMS}"
    )
    for name, samples, optimizer in results:
        print_sfn_section(name, samples, optimizer)
    print(f"\nload average (1, 5, 15 min) at the end: {load_average()}")
    print(f"A load above {args.threads} (the thread count) means other processes shared the cores;")
    print("then trust the minima more than the medians.")


if __name__ == "__main__":
    main()
