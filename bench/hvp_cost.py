"""What a Hessian-vector product costs, in gradients, on the CPU.

    python bench/hvp_cost.py [--repeats N] [--quick] [--threads T] [--only mlp|resnet18]
                             [--compile]

For an MLP 784-256-256-10 at batch 256 and the CIFAR ResNet-18 at batch 32 it times, side by
side (variants interleaved within every repeat, warm-up runs excluded, medians reported):

- one gradient ``g`` (forward + backward), the unit of cost;
- one ``Hv`` from scratch per backend of :class:`sfn_teach.hvp.ModelHVP` (including building
  the forward/backward pass; for ``linearize`` the set-up plus the first product, one sample);
- the marginal ``Hv`` once the work is shared: a further product on the retained
  double-backward graph, and a product of the ``linearize`` trace after its set-up;
- one step of :class:`sfn_teach.optim.SeriesSFN` (K = 5, r = 2), compared with the cost model
  ``1 + 2(K−1)·c_HVP`` gradients, where ``c_HVP`` is the marginal double-backward ratio;
- that step in parts (:class:`StepParts`): the gradient set-up, the products, the series'
  vector arithmetic, the ε-table, the Ritz values, the update and the bookkeeping, timed inside
  real steps by wrapping the functions the step calls (exclusive times, so the parts add up to
  the step; CPU operations are synchronous, so a wall-clock interval is the part's cost);
- with ``--compile``, what ``torch.compile`` makes of the products (:func:`compiled_variants`).

Every time is reported as a ratio to the gradient measured in the same run.
"""

import sfn_teach.cpu  # noqa: F401, I001 (first: how torch's CPU threads wait, before torch starts)

import argparse
import copy
import os
import platform
import statistics
import sys
import time
from collections import defaultdict

import torch
import torch.nn.functional as F

from sfn_teach import hvp as hvp_module
from sfn_teach import optim as optim_module
from sfn_teach import series as series_module
from sfn_teach import update as update_module
from sfn_teach.hvp import ModelHVP, batchnorm_policy, flatten, unflatten
from sfn_teach.models import MLP, count_parameters, resnet18_cifar
from sfn_teach.optim import SeriesSFN

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
    parser.add_argument("--only", choices=("mlp", "resnet18"), help="one network only")
    parser.add_argument(
        "--compile", action="store_true",
        help="also torch.compile's products (minutes of compilation on a CPU)",
    )
    args = parser.parse_args(argv)
    if args.repeats is None:
        args.repeats = 2 if args.quick else 5
    if args.repeats < 1 or args.threads < 1:
        parser.error(f"--repeats and --threads must be >= 1, got {args.repeats}, {args.threads}")
    return args


def problems(quick):
    """``(key, name, model, inputs, targets, calls per sample, run linearize)`` per network."""
    generator = torch.Generator().manual_seed(0)
    mlp = MLP((784, 256, 256, 10), activation="tanh")
    resnet = resnet18_cifar()
    return [
        (
            "mlp",
            "MLP 784-256-256-10 (tanh), batch 256",
            mlp,
            torch.randn(256, 784, generator=generator),
            torch.randint(0, 10, (256,), generator=generator),
            10,
            True,
        ),
        (
            "resnet18",
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


def compiled_variants(model, inputs, targets, v):
    """What ``torch.compile`` (Inductor) makes of the products: timed callables, one-off
    seconds, and notes (an error where it cannot, the relative error of the products against
    the double-backward one).

    - the double backward ``∇(∇f(θ)ᵀv)`` compiled as one function: Inductor's autograd
      (AOTAutograd) refuses a backward of a backward;
    - ``jvp(grad(f))`` compiled: one function of ``(θ, v)``, so each product re-runs the forward
      and backward pass (a product from scratch), after a compilation that is paid once;
    - ``torch.func.linearize``'s traced jvp compiled: the marginal product at its cheapest,
      but the trace holds this batch's activations as constants, so every batch (every step)
      traces and compiles again: its second compilation is reported.
    """
    names = [name for name, p in model.named_parameters() if p.requires_grad]
    primals = tuple(p.detach() for p in model.parameters() if p.requires_grad)
    tangents = tuple(unflatten(v, primals))
    reference = ModelHVP(model, F.cross_entropy, inputs, targets).matvec(v)

    def loss(parameters):
        outputs = torch.func.functional_call(model, dict(zip(names, parameters)), (inputs,))
        return F.cross_entropy(outputs, targets)

    def double_backward(parameters, directions):
        parameters = [p.detach().requires_grad_() for p in parameters]
        grads = torch.autograd.grad(loss(parameters), parameters, create_graph=True)
        return torch.autograd.grad(grads, parameters, directions)

    def jvp_of_grad(parameters, directions):
        return torch.func.jvp(torch.func.grad(loss), (parameters,), (directions,))[1]

    def run(function, *arguments):  # BatchNorm on batch statistics, as ModelHVP does
        with batchnorm_policy(model, "train"):
            return flatten(function(*arguments))

    def first_call(function, *arguments):
        start = time.perf_counter()
        result = run(function, *arguments)
        error = float((result - reference).norm() / reference.norm())
        return time.perf_counter() - start, error

    timed, once, notes = {}, {}, []
    try:
        first_call(torch.compile(double_backward), primals, tangents)
    except RuntimeError as error:
        notes.append(f"torch.compile of the double backward: {str(error).splitlines()[0]}")
    compiled_jvp = torch.compile(jvp_of_grad)
    once["torch.compile(jvp(grad)): compilation + 1st product"], error = first_call(
        compiled_jvp, primals, tangents
    )
    notes.append(f"torch.compile(jvp(grad)): relative error {error:.1e} against double-backward")
    timed["HVP from scratch, torch.compile(jvp(grad))"] = lambda: run(
        compiled_jvp, primals, tangents
    )
    for attempt, label in enumerate(("trace + compilation", "next batch: again")):
        shifted = tuple(p * (1 + 1e-3 * attempt) for p in primals)
        start = time.perf_counter()
        with batchnorm_policy(model, "train"):
            linear = torch.func.linearize(torch.func.grad(loss), shifted)[1]
        compiled_linear = torch.compile(linear)
        trace = time.perf_counter() - start
        seconds_taken, error = first_call(compiled_linear, tangents)
        once[f"torch.compile(linearize jvp): {label} + 1st product"] = trace + seconds_taken
        if not attempt:
            notes.append(f"torch.compile(linearize jvp): relative error {error:.1e}")
    timed["marginal HVP, torch.compile(linearize jvp)"] = lambda: run(compiled_linear, tangents)
    return timed, once, notes


def sfn_step_variant(model, inputs, targets):
    """One ``SeriesSFN`` step on a copy of ``model`` (its in-place update must not invalidate
    the retained graphs built on the original), the optimiser (for its ``stats``) and the
    closure."""
    copy_of_model = copy.deepcopy(model)
    optimizer = SeriesSFN(copy_of_model.parameters(), **SFN_SETTINGS)

    def closure():
        return F.cross_entropy(copy_of_model(inputs), targets)

    return (lambda: optimizer.step(closure)), optimizer, closure


PARTS = ("gradient set-up", "products", "series arithmetic", "ε-table", "Ritz values", "update",
         "bookkeeping")


class StepParts:
    """Seconds of each part of :class:`SeriesSFN` steps, timed inside real steps.

    While :meth:`step` runs, the functions a step calls are wrapped with a wall-clock timer:
    ``CurvatureOptimizer._operator`` (the gradient set-up: the loss and ``g`` with the graph
    kept), ``CurvatureOperator.matvec`` (the products), ``sfn_series`` (the series' vector
    arithmetic: terms, partial sums, norms, moments), ``_epsilon_table``, ``ritz_values``,
    ``curvature_update`` and ``_subtract_from_params`` (the update ``δ``, ``b`` and ``θ − δ``).
    Times are exclusive (a product inside the series counts as a product, not as series
    arithmetic), and what no wrapper covers is the bookkeeping: the scale rule, the finite checks,
    the state, the statistics, Python. So the parts add up to the step. A wrapper costs about a
    microsecond a call, a few dozen a step.
    """

    WRAPPED = (
        (update_module.CurvatureOptimizer, "_operator", "gradient set-up"),
        (hvp_module.CurvatureOperator, "matvec", "products"),
        (optim_module, "sfn_series", "series arithmetic"),
        (series_module, "_epsilon_table", "ε-table"),
        (series_module, "ritz_values", "Ritz values"),
        (update_module, "curvature_update", "update"),
        (update_module.CurvatureOptimizer, "_subtract_from_params", "update"),
    )

    def __init__(self):
        self.samples = defaultdict(list)  # part -> seconds per step
        self._stack = []  # per open interval: seconds of the intervals inside it

    def _timed(self, function, part, totals):
        def wrapper(*args, **kwargs):
            self._stack.append(0.0)
            start = time.perf_counter()
            try:
                return function(*args, **kwargs)
            finally:
                elapsed = time.perf_counter() - start
                totals[part] += elapsed - self._stack.pop()
                self._stack[-1] += elapsed

        return wrapper

    def step(self, optimizer, closure):
        """One ``optimizer.step(closure)`` with its parts recorded."""
        totals = dict.fromkeys(PARTS, 0.0)
        originals = [(owner, name, vars(owner)[name]) for owner, name, _ in self.WRAPPED]
        for (owner, name, original), (_, _, part) in zip(originals, self.WRAPPED):
            if isinstance(original, staticmethod):
                setattr(owner, name, staticmethod(self._timed(original.__func__, part, totals)))
            else:
                setattr(owner, name, self._timed(original, part, totals))
        try:
            self._stack.append(0.0)
            start = time.perf_counter()
            optimizer.step(closure)
            elapsed = time.perf_counter() - start
            totals["bookkeeping"] += elapsed - self._stack.pop()
        finally:
            for owner, name, original in originals:
                setattr(owner, name, original)
        for part, seconds in totals.items():
            self.samples[part].append(seconds)
        self.samples["step (instrumented)"].append(elapsed)


def measure(model, inputs, targets, number, with_linearize, with_compile, repeats):
    """Seconds per sample of each variant (interleaved repeats), the one-off samples, notes,
    the optimiser of the timed steps and the :class:`StepParts` of as many instrumented ones."""
    timed, v = variants(model, inputs, targets)
    timed[STEP], optimizer, closure = sfn_step_variant(model, inputs, targets)
    once = {}
    if with_linearize:
        set_up, first, timed["marginal HVP, linearize (after set-up)"] = linearize_variant(
            model, inputs, targets, v
        )
        once = {
            "linearize set-up (1 sample after a warm-up)": set_up,
            "HVP from scratch, linearize (set-up + 1st product, 1 sample)": set_up + first,
        }
    parts = StepParts()
    samples = interleaved(timed, number, repeats, lambda: parts.step(optimizer, closure))
    tables = [(samples, once, [])]
    if with_compile:  # last: once compiled kernels have run, eager timings scatter widely
        compiled, compiled_once, notes = compiled_variants(model, inputs, targets, v)
        compiled[GRADIENT] = timed[GRADIENT]
        tables.append((interleaved(compiled, number, repeats), compiled_once, notes))
    return tables, optimizer, parts


def interleaved(timed, number, repeats, after_each=None):
    """Seconds per call of each of ``timed``: ``repeats`` samples of ``number`` calls each, the
    order rotated from repeat to repeat, after one untimed call each; ``after_each()``, if
    given, runs ``number`` times after each repeat."""
    for fn in timed.values():
        fn()
    samples = {name: [] for name in timed}
    names = list(timed)
    for r in range(repeats):
        for name in names[r % len(names) :] + names[: r % len(names)]:
            samples[name].append(seconds(timed[name], number))
        for _ in range(number if after_each else 0):
            after_each()
    return samples


def print_table(title, samples, once, notes):
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
    for note in notes:
        print(f"  {note}")


def print_sfn_section(title, samples, optimizer, parts):
    """The measured step against ``1 + 2(K−1)·c_HVP``, ``c_HVP`` the marginal HVP ratio, and
    the step in parts (medians and minima of the instrumented steps, in gradients)."""
    print(f"\n  {title}")
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
    unit = {"median": statistics.median(samples[GRADIENT]), "min": min(samples[GRADIENT])}
    print(f"    the step in parts ({len(parts.samples['products'])} instrumented steps), in g:")
    print(f"      {'part':<24} {'median [ms]':>11} {'x g median':>10} {'x g min':>8}")
    for part in (*PARTS, "step (instrumented)"):
        times = parts.samples[part]
        print(
            f"      {part:<24} {1e3 * statistics.median(times):>11.3f} "
            f"{statistics.median(times) / unit['median']:>10.2f} {min(times) / unit['min']:>8.2f}"
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
    for key, name, model, inputs, targets, number, with_linearize in problems(args.quick):
        if args.only not in (None, key):
            continue
        model.train()
        title = f"{name}, {count_parameters(model):,} parameters"
        if number > 1:
            title += f" (each sample averages {number} calls)"
        if not with_linearize:
            title += "; linearize skipped (--quick)"
        tables, optimizer, parts = measure(
            model, inputs, targets, number, with_linearize, args.compile, args.repeats
        )
        print_table(title, *tables[0])
        for table in tables[1:]:
            print_table(f"{name}: torch.compile, timed after the rest", *table)
        results.append((name, tables[0][0], optimizer, parts))
    print(
        f"\nSeriesSFN step in gradients g, against the cost model 1 + 2(K-1)·c_HVP, K = {NUM_TERMS}"
    )
    for name, samples, optimizer, parts in results:
        print_sfn_section(name, samples, optimizer, parts)
    print(f"\nload average (1, 5, 15 min) at the end: {load_average()}")
    print(f"A load above {args.threads} (the thread count) means other processes shared the cores;")
    print("then trust the minima more than the medians.")


if __name__ == "__main__":
    main()
