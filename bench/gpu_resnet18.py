"""Per-step cost of SGD, Adam and SeriesSFN on the CIFAR ResNet-18, on one GPU.

    python bench/gpu_resnet18.py [--batch-sizes 256 3200] [--repeats 10] [--warmup 3]
                                 [--amp bf16] [--tf32] [--compile] [--budget-s 210] [--smoke]

Run from the repository root with the package installed (``pip install -e .``) or with
``PYTHONPATH=.``. Every line is flushed as it is printed.

Needs no download: every step uses one synthetic CIFAR-shaped batch made on the device
(:func:`sfn_teach.images.synthetic_cifar_batch`). For each batch size it first calibrates, in
fp32 on the eager model, one gradient (forward + backward, the unit ``g``), one forward pass
``f`` and one marginal Hessian-vector product on a retained double-backward graph
(``c_HVP = HVP / g``). Then, per optimiser, a fresh ResNet-18 (full width, ``channels_last``
on a GPU, ``cudnn.benchmark``) takes ``--warmup`` untimed steps (cuDNN autotuning and any
compilation happen there; their time is reported as ``warm-up s``) and up to ``--repeats``
timed steps, each timed with CUDA events. It prints one line per configuration as it finishes
and one table at the end: median ms/step, images/s, the ratio to SGD, peak memory
(``torch.cuda.max_memory_allocated``) and the step in gradient-equivalents next to the cost
model ``1 + 2(K−1)·c_HVP`` (``+ f`` where Levenberg–Marquardt damping re-evaluates the loss).

The optimisers use the published CIFAR-10 settings (docs/method.md §7): SGD; Adam; SeriesSFN
``K=2, r=0`` damped and unadaptive; SeriesSFN ``K=5, r=2`` adaptive with Levenberg–Marquardt
damping, and the same with ``r=0`` (not a published setting: it isolates the cost of Wynn's
ε). SeriesSFN takes its gradient and its ``2(K−1)`` HVPs on the same batch with BatchNorm in
training mode, from one forward pass whose graph is kept (double backward); since the HVPs
reuse the gradient's graph, SeriesSFN always runs in fp32 and
``--amp bf16`` applies to SGD and Adam only. TF32 is off (fp32 convolutions and matmuls,
for the HVPs and everything else) unless ``--tf32``.

Time: budgeted for 5 minutes on one H200-class GPU (two batch sizes × five optimisers): each
configuration stops timing after ``--config-s`` seconds (at least 3 timed steps), and no
configuration starts after ``--budget-s`` seconds (it is then listed as not run). A
configuration that fails (e.g. out of memory) is reported in the table and the rest go on.
``--smoke`` is a CPU check of the script (width 8, batch 8, 2 repeats).
"""

import argparse
import gc
import statistics
import sys
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from sfn_teach.device import Precision, configure_backends, memory_format, tf32, timed
from sfn_teach.hvp import ParamsHVP
from sfn_teach.images import synthetic_cifar_batch
from sfn_teach.models import count_parameters, resnet18_cifar
from sfn_teach.optim import SeriesSFN
from sfn_teach.train import make_closure


@dataclass(frozen=True)
class Optimiser:
    """A benchmarked optimiser: how to build it, and its cost model's ``K`` and extra forward."""

    name: str
    build: Callable  # params -> torch.optim.Optimizer
    num_terms: int = 0  # 0: first order (one gradient per step)
    extra_forward: bool = False  # Levenberg–Marquardt damping re-evaluates the loss


def _series_sfn(num_terms, acceleration_order, **settings):
    return lambda params: SeriesSFN(
        params, num_terms=num_terms, acceleration_order=acceleration_order, scale=100.0,
        damping_min=1e-8, **settings,
    )


ADAPTIVE = dict(adaptive=True, damping=1.0366e-4, damping_factor=0.9)
OPTIMISERS = (
    Optimiser("SGD", lambda params: torch.optim.SGD(params, lr=4.1140e-3)),
    Optimiser("Adam", lambda params: torch.optim.Adam(
        params, lr=7.7037e-5, eps=3.6138e-4, betas=(0.99734, 0.99990))),
    Optimiser("SFN K=2 r=0", _series_sfn(2, 0, lr=0.56201, momentum=0.11519, damping=2.4447e-3),
              num_terms=2),
    Optimiser("SFN K=5 r=0", _series_sfn(5, 0, **ADAPTIVE), num_terms=5, extra_forward=True),
    Optimiser("SFN K=5 r=2", _series_sfn(5, 2, **ADAPTIVE), num_terms=5, extra_forward=True),
)


@dataclass
class Row:
    """The measurements of one (batch size, optimiser) configuration."""

    batch: int
    name: str
    precision: str
    ms: float = float("nan")  # median per timed step
    warmup_s: float = float("nan")
    steps: int = 0
    peak_gib: float = float("nan")
    skipped: int = 0
    gradient_ms: float = float("nan")  # the unit g of this batch size (fp32 gradient)
    model_g: float = float("nan")
    note: str = ""


def say(*args):
    print(*args, flush=True)


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[256, 3200])
    parser.add_argument("--repeats", type=int, default=10, help="timed steps (10)")
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps first (3)")
    parser.add_argument("--amp", choices=("none", "bf16"), default="none",
                        help="bf16 autocast for the SGD/Adam gradient pass")
    parser.add_argument("--tf32", action="store_true", help="allow TF32 convolutions/matmuls")
    parser.add_argument("--compile", action="store_true",
                        help="torch.compile the model, falling back to eager where it fails")
    parser.add_argument("--budget-s", type=float, default=210.0,
                        help="start no configuration after this many seconds (210)")
    parser.add_argument("--config-s", type=float, default=20.0,
                        help="stop timing a configuration after this many seconds (20)")
    parser.add_argument("--smoke", action="store_true",
                        help="CPU check: width 8, batch 8, 2 repeats, 1 warm-up, 1 thread")
    args = parser.parse_args(argv)
    args.width = 64
    if args.smoke:
        args.width, args.batch_sizes, args.repeats, args.warmup = 8, [8], 2, 1
        args.device = torch.device("cpu")
        torch.set_num_threads(1)  # a shared CPU: no OpenMP threads waiting on each other
    elif torch.cuda.is_available():
        args.device = torch.device("cuda")
    else:
        parser.error("no CUDA device: this benchmark is for a GPU (use --smoke for a CPU check)")
    if min(args.batch_sizes) < 1 or args.repeats < 1 or args.warmup < 1:
        parser.error("--batch-sizes, --repeats and --warmup must be >= 1")
    # the library's policy: bf16 autocast for first-order steps only, SeriesSFN in fp32
    args.precision = Precision(autocast=args.amp, tf32=args.tf32, hvp_tf32=args.tf32)
    return args


def milliseconds(fn, device):
    """Milliseconds one call of ``fn`` takes (:func:`sfn_teach.device.timed`: CUDA events on a
    GPU, ``perf_counter`` on a CPU; the call is complete when the time is read)."""
    return timed(fn, device)[1] * 1e3


def median_ms(fn, args):
    """The median of ``args.repeats`` timed calls of ``fn`` after ``args.warmup`` untimed ones."""
    for _ in range(args.warmup):
        fn()
    return statistics.median(milliseconds(fn, args.device) for _ in range(args.repeats))


def fresh_model(args):
    """ResNet-18 for CIFAR on the device, training mode, seed 0; ``channels_last`` on a GPU
    (:func:`sfn_teach.device.memory_format`: a CPU keeps it contiguous)."""
    torch.manual_seed(0)
    model = resnet18_cifar(width=args.width)
    return model.to(args.device, memory_format=memory_format(args.device, True)).train()


def make_batch(batch_size, args):
    generator = torch.Generator(device=args.device).manual_seed(batch_size)
    images, labels = synthetic_cifar_batch(batch_size, args.device, generator)
    return images.contiguous(memory_format=memory_format(args.device, True)), labels


def release_memory(device):
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)


def calibrate(images, labels, args):
    """``(gradient ms, forward / gradient, marginal HVP / gradient)`` in fp32, eager."""
    model = fresh_model(args)
    params = [p for p in model.parameters() if p.requires_grad]

    def loss():
        return F.cross_entropy(model(images), labels)

    def forward():
        with torch.no_grad():
            loss()

    gradient = median_ms(lambda: torch.autograd.grad(loss(), params), args)
    forward_ms = median_ms(forward, args)
    operator = ParamsHVP(loss, params)  # one forward/backward, the graph retained
    vector = torch.randn(operator.dim, device=args.device)
    hvp = median_ms(lambda: operator.matvec(vector), args)
    return gradient, forward_ms / gradient, hvp / gradient


def step_function(optimiser, model, images, labels, args):
    """One training step of ``optimiser`` on the fixed batch, and the optimiser.

    The step is the training loop's (:func:`sfn_teach.train.make_closure`), in the precision
    that ``args.precision`` gives this kind of optimiser.
    """
    optimizer = optimiser.build(model.parameters())
    dtype, _ = args.precision.step(curvature=bool(optimiser.num_terms))

    def step():
        optimizer.step(make_closure(optimizer, model, F.cross_entropy, images, labels,
                                    autocast_dtype=dtype))

    return step, optimizer


def measure(optimiser, images, labels, args, row, compile_model):
    """Warm up, then time up to ``args.repeats`` steps (at most ``args.config_s`` seconds)."""
    model = fresh_model(args)
    if compile_model:
        model = torch.compile(model)
    step, optimizer = step_function(optimiser, model, images, labels, args)
    start = time.perf_counter()
    for _ in range(args.warmup):
        step()
    if args.device.type == "cuda":
        torch.cuda.synchronize()
    row.warmup_s = time.perf_counter() - start
    times, start = [], time.perf_counter()
    while len(times) < args.repeats and (
        len(times) < 3 or time.perf_counter() - start < args.config_s
    ):
        times.append(milliseconds(step, args.device))
        row.skipped += bool(getattr(optimizer, "stats", {}).get("skipped"))
    row.ms, row.steps = statistics.median(times), len(times)


def first_line(error):
    text = str(error).strip().splitlines()
    return f"{type(error).__name__}: {text[0][:100] if text else ''}"


def run_configuration(optimiser, images, labels, args, row):
    """Fill ``row``; compile falls back to eager, and any failure is written into the row."""
    try:
        if args.compile:
            start = time.perf_counter()
            try:
                return measure(optimiser, images, labels, args, row, compile_model=True)
            except torch.OutOfMemoryError:
                raise
            except Exception as error:  # e.g. double backward through a compiled graph
                row.note = (f"compile fell back to eager after {time.perf_counter() - start:.1f} s"
                            f" ({first_line(error)}); ")
                row.skipped = 0
                torch._dynamo.reset()
        measure(optimiser, images, labels, args, row, compile_model=False)
    except torch.OutOfMemoryError:
        row.note += "out of memory"
    except Exception as error:  # report it in the table, go on with the others
        row.note += f"failed: {first_line(error)}"


def peak_gib(device):
    if device.type != "cuda":
        return float("nan")
    return torch.cuda.max_memory_allocated(device) / 2**30


def precision_of(optimiser, args):
    dtype, allow_tf32 = args.precision.step(curvature=bool(optimiser.num_terms))
    return "bf16 autocast" if dtype is not None else ("tf32" if allow_tf32 else "fp32")


def benchmark_batch_size(batch_size, args, deadline):
    """The rows of one batch size (calibration first, then every optimiser)."""
    images, labels = make_batch(batch_size, args)
    try:
        gradient_ms, forward_g, hvp_g = calibrate(images, labels, args)
        say(f"\nbatch {batch_size}: gradient {gradient_ms:.2f} ms (fp32) = 1 g, forward "
            f"f = {forward_g:.2f} g, marginal HVP c_HVP = {hvp_g:.2f} g")
    except Exception as error:  # e.g. out of memory: the steps may still be measurable
        gradient_ms = forward_g = hvp_g = float("nan")
        say(f"\nbatch {batch_size}: calibration failed ({first_line(error)})")
    rows = []
    for optimiser in OPTIMISERS:
        row = Row(batch_size, optimiser.name, precision_of(optimiser, args))
        row.gradient_ms = gradient_ms
        row.model_g = 1 + 2 * max(optimiser.num_terms - 1, 0) * hvp_g
        row.model_g += forward_g if optimiser.extra_forward else 0.0
        release_memory(args.device)
        if time.perf_counter() > deadline:
            row.note = f"not run: past --budget-s {args.budget_s:g}"
        else:
            with warnings.catch_warnings():  # a diverging series warns every step
                warnings.simplefilter("ignore", RuntimeWarning)
                run_configuration(optimiser, images, labels, args, row)
            row.peak_gib = peak_gib(args.device)
        say(f"  {row.name:<12} {row.ms:9.2f} ms/step  {row.steps} steps  "
            f"warm-up {row.warmup_s:.1f} s  peak {row.peak_gib:.2f} GiB  {row.note}")
        rows.append(row)
    return rows


def print_table(rows, setup):
    say(f"\n{setup}")
    say("| batch | optimiser | precision | ms/step | images/s | × SGD | step [g] | model [g] "
        "| peak GiB | warm-up s | steps | skipped | note |")
    say("|" + "---|" * 13)
    sgd = {row.batch: row.ms for row in rows if row.name == "SGD"}
    for row in rows:
        say(f"| {row.batch} | {row.name} | {row.precision} | {row.ms:.2f} | "
            f"{row.batch / row.ms * 1e3:,.0f} | {row.ms / sgd[row.batch]:.2f} | "
            f"{row.ms / row.gradient_ms:.2f} | {row.model_g:.2f} | {row.peak_gib:.2f} | "
            f"{row.warmup_s:.1f} | {row.steps} | {row.skipped} | {row.note.strip('; ')} |")


def setup_line(args):
    """The device, the software and the command line, in one line."""
    device = args.device
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU (--smoke)"
    cudnn = torch.backends.cudnn.version() if device.type == "cuda" else None
    return (f"{name}; torch {torch.__version__}, CUDA {torch.version.cuda}, cuDNN {cudnn}; "
            f"command: python {' '.join(sys.argv)}")


def header(args):
    say("ResNet-18 (CIFAR) step cost: SGD, Adam, SeriesSFN on synthetic CIFAR-shaped batches")
    say(setup_line(args))
    parameters = count_parameters(resnet18_cifar(width=args.width))
    layout = "channels_last" if memory_format(args.device, True) == torch.channels_last else \
        "contiguous (channels_last is for GPUs)"
    say(f"model: resnet18_cifar(width={args.width}), {parameters:,} parameters, {layout}, "
        f"cudnn.benchmark={torch.backends.cudnn.benchmark}; amp={args.amp}, tf32={args.tf32}, "
        f"compile={args.compile}; warm-up {args.warmup}, repeats {args.repeats} "
        f"(at most {args.config_s:g} s each), budget {args.budget_s:g} s")
    say("SeriesSFN: gradient and 2(K-1) HVPs on one batch, BatchNorm in training mode, one "
        "forward with the graph kept (double backward), fp32; K=5 rows: adaptive with "
        "Levenberg-Marquardt damping (+1 forward). step [g] = ms/step / fp32 gradient ms; "
        "model [g] = 1 + 2(K-1) c_HVP (+ f).")


def main(argv=None):
    args = parse_args(argv)
    configure_backends(args.device)  # cuDNN autotuning on a GPU
    with tf32(args.tf32):  # TF32 convolutions and matmuls only with --tf32
        header(args)
        start = time.perf_counter()
        rows = []
        for batch_size in args.batch_sizes:
            rows += benchmark_batch_size(batch_size, args, start + args.budget_s)
        print_table(rows, setup_line(args))
    say(f"\ntotal {time.perf_counter() - start:.0f} s")


if __name__ == "__main__":
    main()
