"""What a K-FAC step costs, in gradients, on the CPU, and of what it is made.

    python bench/kfac_cost.py [--repeats N] [--threads T] [--only NAME ...] [--large]

For the digits MLP of ``benchmarks/digits_mlp.toml`` (its K-FAC row: float64, batch 400), the
CIFAR ResNet-18 of ``benchmarks/cifar10_smoke.toml`` (width 4, batch 30) and the CIFAR ResNet-18
of width 64 at batch 32 (``--large`` adds width 64 at the batch of the K-FAC row of
``benchmarks/cifar10_resnet18_quick.toml``) it times, side by side (variants interleaved
within every repeat, the order rotated, warm-up runs excluded, medians and minima reported):

- one gradient ``g`` (forward + ``loss.backward()``), the unit of cost;
- forward, the Monte-Carlo Fisher's backward (labels sampled from the model's prediction,
  parameter gradients skipped, as ASDL does) and the loss's backward, without K-FAC's hooks:
  minus ``g``, the *sampled backward*;
- the same through ASDL's Fisher maker, whose hooks form every layer's factors
  ``A = E[a aᵀ]`` and ``G = E[g gᵀ]`` (no inversion): minus the previous, the *factor updates*;
- the *inversions*: every layer's damped Cholesky inverses ``(A + π√λ I)⁻¹``,
  ``(G + (√λ/π) I)⁻¹`` from given factors (ASDL's ``update_inv``);
- the *preconditioning*: ``∇W ← (G + …)⁻¹ ∇W (A + …)⁻¹`` on every layer (ASDL's
  ``precondition``), from given inverses and gradients;
- a whole K-FAC step as the trainer takes it (:class:`sfn_teach.kfac.KFAC`), with factors
  and inverses (a *curvature step*) and without them (``curvature_interval`` large).

Then the parts in gradients, their sum against the measured curvature step, and what the
trainer's count uses (:class:`sfn_teach.train.CostModel`): a curvature step counts
``1 + FISHER_GRADIENTS + kfac_curvature`` gradients, with ``kfac_curvature`` = factor updates
+ inversions; every K-FAC step adds ``kfac_precondition`` = the preconditioning. Every time is
a ratio to the gradient measured in the same run; the load average is printed at the start
and the end (other processes only ever add time: under load trust the minima). Time on a
2-core CPU, 1 thread: the digits and the smoke network under a minute, width 64 at batch 32
about 5 minutes, ``--large`` (batch 512) about 25.
"""

import argparse
import copy
import statistics
import sys
import time
import warnings
from pathlib import Path

import torch
import torch.nn.functional as F
from asdl import FISHER_MC, KfacGradientMaker, PreconditioningConfig
from asdl.utils import skip_param_grad

from sfn_teach.bench.config import build_model, load_config
from sfn_teach.data import load_digits
from sfn_teach.kfac import FISHER_GRADIENTS, KFAC, NORMALISATIONS
from sfn_teach.models import count_parameters, resnet18_cifar

sys.path.insert(0, str(Path(__file__).parent))
from hvp_cost import cpu_name, load_average  # noqa: E402

BENCHMARKS = Path(__file__).resolve().parent.parent / "benchmarks"
GRADIENT = "gradient g (forward + backward)"
SAMPLED = "forward + sampled backward + backward, no hooks"
FACTORS = "the same through ASDL's Fisher maker (factors A, G)"
INVERSIONS = "inversions: damped Cholesky inverses of A, G"
PRECONDITION = "preconditioning: G⁻¹ ∇W A⁻¹ on every layer"
CURVATURE_STEP = "K-FAC curvature step (KFAC.step)"
PLAIN_STEP = "K-FAC step without curvature (KFAC.step)"
STEP_LR = 1e-6  # the timed steps hardly move the model: every repeat sees the same network


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=5, help="timed repeats (default 5)")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch.set_num_threads (1: steady ratios on a shared machine, "
                             "where 2 threads gave inversions 1-50x their time)")
    parser.add_argument("--only", nargs="+", choices=("digits", "smoke", "resnet18", "large"),
                        help="measure only these networks")
    parser.add_argument("--large", action="store_true",
                        help="also width 64 at the quick config's K-FAC batch (minutes)")
    args = parser.parse_args(argv)
    if args.repeats < 1 or args.threads < 1:
        parser.error(f"--repeats and --threads must be >= 1, got {args.repeats}, {args.threads}")
    return args


def kfac_row(config):
    """The K-FAC row (:class:`~sfn_teach.bench.config.OptimizerSpec`) of a config."""
    return next(spec for spec in config.optimizers if spec.type == "kfac")


def problems(names):
    """``(title, model, inputs, targets, damping, calls per sample)`` of each network in
    ``names``."""
    generator = torch.Generator().manual_seed(0)

    def images(batch):
        return (torch.randn(batch, 3, 32, 32, generator=generator),
                torch.randint(0, 10, (batch,), generator=generator))

    found = []
    if "digits" in names:
        config = load_config(BENCHMARKS / "digits_mlp.toml")
        spec = kfac_row(config)
        torch.manual_seed(0)
        model = build_model(config, spec)
        x, y = next(load_digits(config.dtype).train.chunks(spec.batch_size))
        sizes = "-".join(str(layer.in_features) for layer in model.modules()
                         if isinstance(layer, torch.nn.Linear)) + "-10"
        found.append((f"digits MLP {sizes} ({config.model['activation']}, "
                      f"{config.dtype}), batch {spec.batch_size} (digits_mlp.toml)", model, x, y,
                      spec.hyperparameters.get("damping", 1e-3), 20))
    for key, path in (("smoke", "cifar10_smoke.toml"), ("large", "cifar10_resnet18_quick.toml")):
        if key in names:
            config = load_config(BENCHMARKS / path)
            spec = kfac_row(config)
            width = config.model["width"]
            found.append((f"ResNet-18 (CIFAR, width {width}, BatchNorm train), batch "
                          f"{spec.batch_size} ({path})", resnet18_cifar(width=width),
                          *images(spec.batch_size), spec.hyperparameters.get("damping", 1e-3),
                          5 if width < 16 else 1))
    if "resnet18" in names:
        found.append(("ResNet-18 (CIFAR, width 64, BatchNorm train), batch 32",
                      resnet18_cifar(), *images(32), 1e-3, 1))
    return found


def asdl_maker(model, inputs, targets, damping):
    """ASDL's K-FAC gradient maker on ``model`` as :class:`sfn_teach.kfac.KFAC` builds it
    (MC Fisher, BatchNorm left out), set up on the batch the way ASDL documents."""
    config = PreconditioningConfig(data_size=len(targets), damping=damping,
                                   ignore_modules=list(NORMALISATIONS))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        maker = KfacGradientMaker(model, config, fisher_type=FISHER_MC)
    dummy_y = maker.setup_model_call(model, inputs)
    maker.setup_loss_call(F.cross_entropy, dummy_y, targets)
    return maker


def factors(maker, damping):
    """Forward, sampled backward with the factor hooks, loss backward (no inversion)."""
    maker.model.zero_grad(set_to_none=True)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", "Using a non-full backward hook")
        maker.delegate_forward_and_backward(
            maker.fisher_maker, data_size=maker.config.data_size, scale=1, accumulate=False,
            calc_loss_grad=True, calc_inv=False, damping=damping)


def variants(model, inputs, targets, damping):
    """``{name: (prepare, timed)}``: ``timed()`` is measured, ``prepare()`` (untimed) runs just
    before it. Each variant that changes its network works on a copy of its own."""
    params = [p for p in model.parameters() if p.requires_grad]
    batch = len(targets)

    def gradient():
        model.zero_grad(set_to_none=True)
        F.cross_entropy(model(inputs), targets).backward()

    def passes():
        model.zero_grad(set_to_none=True)
        logits = model(inputs)
        loss = F.cross_entropy(logits, targets, reduction="sum")
        log_probs = F.log_softmax(logits, dim=-1)
        with torch.no_grad():
            sampled = torch.distributions.Categorical(logits=logits).sample()
        with skip_param_grad(model):
            F.nll_loss(log_probs, sampled, reduction="sum").backward(retain_graph=True)
        loss.backward()

    factor_maker = asdl_maker(copy.deepcopy(model), inputs, targets, damping)
    inverse_maker = asdl_maker(copy.deepcopy(model), inputs, targets, damping)
    factors(inverse_maker, damping)
    kron = [getattr(module, inverse_maker.fisher_maker.config.fisher_attr).kron
            for module in inverse_maker.modules_for_curvature]
    precondition_maker = asdl_maker(copy.deepcopy(model), inputs, targets, damping)
    factors(precondition_maker, damping)
    precondition_maker.update_preconditioner()  # (a no-op without the moving average)
    for module in precondition_maker.modules_for_curvature:
        getattr(module, precondition_maker.fisher_maker.config.fisher_attr).kron.update_inv(
            damping)
    precondition_params = [p for p in precondition_maker.model.parameters() if p.requires_grad]
    saved = [p.grad.clone() for p in precondition_params]

    def restore_gradients():
        for p, grad in zip(precondition_params, saved):
            p.grad.copy_(grad)

    def kfac_step(interval):
        network = copy.deepcopy(model)
        optimizer = KFAC(network, lr=STEP_LR, damping=damping, curvature_interval=interval,
                         data_size=batch)
        return lambda: optimizer.step(lambda: F.cross_entropy(network(inputs), targets)), optimizer

    curvature_step, _ = kfac_step(1)
    plain_step, plain = kfac_step(10**9)
    plain_step()  # its first step is a curvature step; the timed ones are not
    assert not plain.curvature_step and len(params) == len(precondition_params)
    nothing = lambda: None  # noqa: E731
    return {
        GRADIENT: (nothing, gradient),
        SAMPLED: (nothing, passes),
        FACTORS: (nothing, lambda: factors(factor_maker, damping)),
        INVERSIONS: (nothing, lambda: [matrix.update_inv(damping) for matrix in kron]),
        PRECONDITION: (restore_gradients, precondition_maker.precondition),
        CURVATURE_STEP: (nothing, curvature_step),
        PLAIN_STEP: (nothing, plain_step),
    }


def seconds(prepare, run, number):
    """Seconds per call of ``run``, averaged over ``number`` calls (``prepare`` untimed before
    each)."""
    total = 0.0
    for _ in range(number):
        prepare()
        start = time.perf_counter()
        run()
        total += time.perf_counter() - start
    return total / number


def measure(timed, repeats, number):
    """Seconds of each variant per repeat (interleaved, the order rotated; each sample the
    mean of ``number`` calls; one untimed warm-up call of each first)."""
    for prepare, run in timed.values():
        prepare()
        run()
    samples = {name: [] for name in timed}
    names = list(timed)
    for r in range(repeats):
        for name in names[r % len(names):] + names[: r % len(names)]:
            samples[name].append(seconds(*timed[name], number))
    return samples


def parts(samples, statistic):
    """The K-FAC step's parts in gradients by ``statistic`` (``statistics.median`` or
    ``min``): ``{part: ratio}``, with the two measured steps and the cost-model constants."""
    value = {name: statistic(times) for name, times in samples.items()}
    unit = value[GRADIENT]
    ratio = {name: seconds / unit for name, seconds in value.items()}
    result = {
        "forward + backward": 1.0,
        "sampled backward": ratio[SAMPLED] - 1.0,
        "factor updates": ratio[FACTORS] - ratio[SAMPLED],
        "inversions": ratio[INVERSIONS],
        "preconditioning": ratio[PRECONDITION],
    }
    result["sum of the parts"] = sum(result.values())
    result["curvature step, measured"] = ratio[CURVATURE_STEP]
    result["step without curvature, measured"] = ratio[PLAIN_STEP]
    result["kfac_curvature"] = result["factor updates"] + result["inversions"]
    result["kfac_precondition"] = result["preconditioning"]
    return result


def print_problem(title, samples):
    """Seconds per variant and ratios to ``g``; then the parts in gradients."""
    median = {name: statistics.median(times) for name, times in samples.items()}
    fastest = {name: min(times) for name, times in samples.items()}
    print(f"\n{title}")
    print(f"  {'variant':<56} {'median [s]':>10} {'min [s]':>9} {'max [s]':>9} "
          f"{'x g median':>10} {'x g min':>8}")
    for name, times in samples.items():
        print(f"  {name:<56} {median[name]:>10.5f} {fastest[name]:>9.5f} {max(times):>9.5f} "
              f"{median[name] / median[GRADIENT]:>10.2f} {fastest[name] / fastest[GRADIENT]:>8.2f}")
    by_median, by_min = parts(samples, statistics.median), parts(samples, min)
    print(f"\n  {'in gradients g':<56} {'medians':>10} {'minima':>9}")
    for name in by_median:
        print(f"  {name:<56} {by_median[name]:>10.2f} {by_min[name]:>9.2f}")
    counted = 1 + FISHER_GRADIENTS
    print(f"  counted before kfac_curvature: {counted} a curvature step, 1 a step without; "
          f"with the constants above (medians): "
          f"{counted + by_median['kfac_curvature'] + by_median['kfac_precondition']:.2f} and "
          f"{1 + by_median['kfac_precondition']:.2f}")


def main(argv=None):
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    names = args.only or ("digits", "smoke", "resnet18", *(("large",) if args.large else ()))
    print("K-FAC step cost in gradient-equivalents g (interleaved repeats, warm-up excluded)")
    print(f"command: {' '.join([sys.executable.rsplit('/', 1)[-1]] + sys.argv)}")
    print(f"device: cpu ({cpu_name()}), torch {torch.__version__}, threads "
          f"{torch.get_num_threads()}, repeats {args.repeats}; lr of the timed steps {STEP_LR}")
    print(f"load average (1, 5, 15 min) at the start: {load_average()}")
    for title, model, inputs, targets, damping, number in problems(names):
        model.train()
        model = model.to(inputs.dtype)
        samples = measure(variants(model, inputs, targets, damping), args.repeats, number)
        each = f" (each sample averages {number} calls)" if number > 1 else ""
        print_problem(f"{title}, {count_parameters(model):,} parameters, damping "
                      f"{damping}{each}", samples)
    print(f"\nload average (1, 5, 15 min) at the end: {load_average()}")
    print(f"A load above {args.threads} (the thread count) means other processes shared the "
          "cores; then trust the minima more than the medians.")


if __name__ == "__main__":
    main()
