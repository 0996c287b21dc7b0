# ---
# jupyter:
#   jupytext:
#     cell_metadata_filter: tags,-all
#     formats: ipynb,py:percent
#     notebook_metadata_filter: kernelspec,jupytext
#     text_representation:
#       extension: .py
#       format_name: percent
#       format_version: '1.3'
#       jupytext_version: 1.19.6
#   kernelspec:
#     display_name: Python 3 (ipykernel)
#     language: python
#     name: python3
# ---

# %% [markdown]
# # 06 · ResNet-18 on CIFAR-10
#
# The paper's headline experiment: a CIFAR ResNet-18 (11 million parameters) trained on
# CIFAR-10 by series SFN — adaptive, and damped with fixed step sizes — against SGD and Adam,
# with the hyperparameters its authors published after tuning every optimiser under equal
# time budgets; beside them the optimisers a user would pick instead, with the settings
# their authors or libraries give for CIFAR-10 ResNets: AdaHessian and Sophia-H (a
# Hutchinson Hessian-vector product every step, or every tenth), L-BFGS and K-FAC. Here
# nothing can be exact any more: the Hessian has $10^{14}$ entries, and every step of the
# series is $2(K-1)$ Hessian-vector products on a batch of 3,200 images.
#
# **Learning objectives.** After this notebook you can
#
# 1. say what one step of each optimiser costs — in Hessian-vector products, in
#    gradient-equivalents and in GPU time — and what a full run costs;
# 2. run the benchmark from a panel (or from the command line on a GPU node), watch it live,
#    interrupt it and resume it;
# 3. read the results honestly: loss *and* accuracy, against epochs *and* wall-clock;
# 4. explain what has to be all-reduced when the batch is split over several GPUs.
#
# **What this notebook runs.** With a GPU it runs `benchmarks/cifar10_resnet18_quick.toml`
# (3 epochs with augmentation, about twenty minutes — an estimate until measured on your GPU) and
# offers the paper's full setting, `cifar10_resnet18_paper.toml` (72 epochs). Without a GPU it
# says so and runs `cifar10_smoke.toml`: a ResNet-18 of width 4 on a small archive generated in
# the exact CIFAR-10 binary format, which exercises every stage of the pipeline in seconds but
# measures nothing. All three configs have the same nine rows: the three series rows, SGD,
# Adam, AdaHessian, Sophia-H, L-BFGS and K-FAC; the smoke run takes a few steps of every one
# (two in the fast mode of the tests).

# %% tags=["parameters"]
import os

FAST = os.environ.get("SFN_TEACH_FAST") == "1"
CONFIG_ON_GPU = "cifar10_resnet18_quick"  # or "cifar10_resnet18_paper" (72 epochs, hours)
USE_GENERATED_DATA = False  # True: a full-size generated archive instead of downloading CIFAR-10
RUN_ON_OPEN = None  # run the benchmark when the notebook runs (None: only the CPU smoke run)
SPECTRUM_WIDTH = 4 if FAST else 8  # ResNet-18 width for λ_max at initialisation (64: the full one)
SPECTRUM_BATCH = 64 if FAST else 128
OUT_DIR = "../runs/notebook06"  # git-ignored; pressing Run again resumes an interrupted run

# %%
import sfn_teach.cpu  # first, before torch starts: how its CPU threads wait

import dataclasses
from pathlib import Path

import matplotlib.pyplot as plt
import torch
import torch.nn.functional as F
from IPython.display import Markdown, display

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib

from sfn_teach import exercises
from sfn_teach.bench import (
    load_config,
    load_dataset,
    plot_curves,
    plot_optimizer_stats,
    validate_config,
)
from sfn_teach.benchmark_panel import BenchmarkPanel
from sfn_teach.cifar10 import CLASSES, synthetic_cifar_batch
from sfn_teach.hvp import ModelHVP, power_iteration
from sfn_teach.models import count_parameters, resnet18_cifar
from sfn_teach.registry import OPTIMIZERS

# %matplotlib inline
print(sfn_teach.cpu.status())  # what sfn-teach will compute with
BENCHMARKS = Path("..") / "benchmarks"

# %% [markdown]
# ## 1. The device
#
# The series needs a GPU for this model: on a CPU one SeriesSFN step of ResNet-18 with $K = 5$
# on a batch of only 32 images costs about 25 gradients, several seconds
# (`bench/hvp_cost.py`).

# %%
HAS_GPU = torch.cuda.is_available()
if HAS_GPU:
    config_name = CONFIG_ON_GPU
    print(f"GPU: {torch.cuda.get_device_name()} — running {config_name}")
else:
    config_name = "cifar10_smoke"
    print("No GPU here: running the smoke configuration (tiny ResNet-18, generated data, "
          "CPU). It shows every stage of the pipeline; its numbers mean nothing.")
config = tomllib.loads((BENCHMARKS / f"{config_name}.toml").read_text())
if USE_GENERATED_DATA:
    config.setdefault("data", {})["generated"] = True
run_on_open = (not HAS_GPU) if RUN_ON_OPEN is None else RUN_ON_OPEN

# %% [markdown]
# ## 2. What a step costs, and what a run costs
#
# Work is counted in **gradient-equivalents**: a gradient (forward and backward) is 1, a
# Hessian-vector product on the retained graph of the gradient costs $c_{HVP}$ gradients, a
# forward pass ½. A SeriesSFN step with $K$ terms costs
# $1 + 2(K-1)\,c_{HVP}$ (+ ½ with Levenberg–Marquardt damping); SGD and Adam cost 1. On the
# CPU $c_{HVP} \approx 2.7$ for ResNet-18 (`bench/hvp_cost.py`); `bench/gpu_resnet18.py`
# measures it on a GPU. The same rules count the other rows: AdaHessian and Sophia-H one
# gradient a step and a Hutchinson product every `update_period` steps (1 and 10); L-BFGS one
# gradient per evaluation of its closure, about `max_eval` = 6 a step; K-FAC one gradient and
# its preconditioning $G^{-1}\nabla W A^{-1}$ ($c_P$) a step, and on every
# `curvature_interval`-th step (10 here) the Fisher's sampled backward (1) and the factor
# updates and Cholesky inversions ($c_{KF}$). $c_{KF}$ and $c_P$ are measured in gradients by
# `bench/kfac_cost.py` and written in each config's `[cost]` table (here: the CPU ratios for
# width 64 at K-FAC's batch of 512).

# %%
C_HVP = 2.7  # gradients per HVP: the CPU measurement for ResNet-18 (bench/hvp_cost.py)
paper = load_config(BENCHMARKS / "cifar10_resnet18_paper.toml")
cost_model = dataclasses.replace(paper.cost, hvp=C_HVP)  # the config's K-FAC constants


def work_per_step(spec):
    """The work of one step of ``spec`` by the trainer's rules (the counts of
    sfn_teach.cost.COUNTS, averaged over the steps where an optimiser does some work only
    every few steps; L-BFGS at its max_eval)."""
    hp = {**OPTIMIZERS[spec.type].defaults, **spec.hyperparameters}
    if spec.type == "series_sfn":
        return dict(gradients=1, hvps=2 * (hp["num_terms"] - 1),
                    forward=1 if hp["damping_factor"] else 0)
    if spec.type in ("adahessian", "sophia_h"):
        return dict(gradients=1, hvps=hp["num_samples"] / hp["update_period"])
    if spec.type == "lbfgs":
        return dict(gradients=hp["max_eval"] or hp["max_iter"] * 5 // 4)
    if spec.type == "kfac":
        every = 1 / hp["curvature_interval"]
        return dict(gradients=1 + every, factor_updates=every, preconditionings=1)
    return dict(gradients=1)


costs = {}
print(f"{'optimiser':>44} {'batch':>6} {'steps/epoch':>12} {'HVPs/step':>10} {'g/step':>7}")
for spec in paper.optimizers:
    work = {"hvps": 0, "forward": 0, **work_per_step(spec)}
    costs[spec.name] = cost_model(**work)
    steps_per_epoch = paper.num_steps(spec) // paper.epochs
    print(f"{spec.name:>44} {spec.batch_size:>6} {steps_per_epoch:>12} {work['hvps']:>10.3g} "
          f"{costs[spec.name]:>7.2f}")
print(f"\nResNet-18: {count_parameters(resnet18_cifar()):,} parameters; {paper.epochs} epochs "
      "of 45,000 training images (5,000 held out for validation); K-FAC's constants "
      f"c_KF = {cost_model.kfac_curvature}, c_P = {cost_model.kfac_precondition}")

# An epoch passes every training image once, so its work is (g per step) gradient passes
# over the training set, whatever the batch size.
fig, ax = plt.subplots(figsize=(7, 4.2))
ax.barh(list(costs), list(costs.values()), color=[f"C{i}" for i in range(len(costs))])
ax.set(xlabel="work per epoch, in gradient passes over the training set",
       title=f"Cost of the paper's settings (c_HVP = {C_HVP})")
plt.show()
stated = {"SeriesSFN adaptive": 23.1, "SeriesSFN damped unadaptive, paper's V rule": 6.4,
          "AdaHessian": 3.7, "Sophia-H": 1.27, "L-BFGS": 6, "K-FAC": 1.43}
assert all(round(costs[name], 2) == value for name, value in stated.items()), \
    "the text below states these costs"

# %% [markdown]
# An epoch of the adaptive series costs about $1 + 8 \cdot 2.7 + ½ \approx 23$ times an epoch
# of SGD, and the damped unadaptive variant with $K = 2$ about 6.4 times. Of the other rows,
# AdaHessian pays for its Hessian-vector product every step, $1 + c_{HVP} = 3.7$; Sophia-H,
# with one every ten steps, 1.27; L-BFGS about 6, one gradient per closure evaluation of its
# line search; and K-FAC $1 + c_P + (1 + c_{KF})/10 = 1 + 0.04 + 3.9/10 \approx 1.43$: at its
# batch of 512 the factor updates of a curvature step cost 2.6 gradients and the
# preconditioning of a step only 0.04, where at a batch of 32 the Cholesky inversions alone
# cost 5 (`bench/kfac_cost.py`; the digits MLP of notebook 04 pays 2.8 and 0.12). These are
# CPU ratios; a GPU has its own. The paper compares the optimisers *per unit of time*, with
# every one tuned under the same time budget: a fair comparison has to pay for the curvature.

# %% [markdown]
# ### Where does the paper's $V_0 = 100$ sit on this network's spectrum?
#
# The series resolves eigenvalues only down to about $\sqrt{V/K}$ and converges only where
# $h^2 \le 2V$ (notebooks 03 and 04). On the digits MLP of notebook 04, $V_0 = 100$ lay a
# hundred times *above* $\lambda_{\max}^2$, so the series was gradient descent in disguise.
# Here is $\hat\lambda_{\max}$ of ResNet-18 at initialisation, by power iteration with
# Hessian-vector products (training-mode BatchNorm, a batch of generated CIFAR-shaped
# images; on a CPU a narrower network, which has the same layers).

# %%
device = torch.device("cuda" if HAS_GPU else "cpu")
torch.manual_seed(0)
spectrum_model = resnet18_cifar(width=SPECTRUM_WIDTH).to(device).train()
spectrum_images, spectrum_labels = synthetic_cifar_batch(
    SPECTRUM_BATCH, device, torch.Generator(device).manual_seed(0))
spectrum_operator = ModelHVP(spectrum_model, F.cross_entropy, spectrum_images, spectrum_labels)
estimate = power_iteration(spectrum_operator.matvec, spectrum_operator.grad.numel(),
                           num_iterations=30, tol=1e-3, dtype=spectrum_operator.grad.dtype,
                           device=device, generator=torch.Generator(device).manual_seed(0))
lambda_max = estimate.value
print(f"ResNet-18 of width {SPECTRUM_WIDTH} at initialisation: λ̂_max ≈ {lambda_max:.3g} "
      f"({estimate.num_products} HVPs), λ̂_max² ≈ {lambda_max ** 2:.3g}; "
      f"V₀ = 100 is {100 / lambda_max ** 2:.2g} · λ̂_max²")
assert 100 < lambda_max**2 / 2, "the text below says V₀ = 100 lies below λ_max²/2 here"

# %% [markdown]
# Here it is the other way round: $V_0 = 100$ lies *below* $\lambda_{\max}^2/2$, where the
# series diverges. The paper's rule ($V_t = \max(V_{t-1}, \|H^2g\|/\|g\|)$) raises $V$ from
# the first product pair at once, but $\|H^2 g\|/\|g\|$ only bounds $\lambda_{\max}^2$
# from below, so the first steps may still diverge (the warning in section 4). The library's
# default rule, `scale_rule="ritz"`, starts from a power iteration and then takes
# $V = (1.25\,\hat\lambda_{\max})^2$ from the Ritz values that the series' own terms give
# for free, so $V$ follows the spectrum both ways (notebook 04). The configs keep the paper's
# settings as the paper's rows ("paper's V rule") and add the default rule as its own row.

# %% [markdown]
# ## 3. The data
#
# CIFAR-10 comes from its authors' binary distribution: 170 MB, checked by size and SHA-256
# *before* anything is read, parsed record by record with NumPy (no pickle), and cached as
# uint8 arrays. The whole split then sits on the device as uint8; each batch is normalised,
# and optionally cropped and flipped, on the device. The paper holds out 10 % of the training
# set for validation and uses no augmentation.

# %%
dataset = load_dataset(validate_config(config, config["name"]))
train = dataset.train
print({name: len(dataset.split(name)) for name in ("train", "val", "test")},
      f"stored as {train.inputs.dtype} on {train.inputs.device}")
images = train.inputs[:16].float().permute(0, 2, 3, 1).cpu() / 255
fig, axes = plt.subplots(2, 8, figsize=(10, 3))
for ax, image, label in zip(axes.flat, images, train.targets[:16].tolist()):
    ax.imshow(image.numpy())
    ax.set_title(CLASSES[label], fontsize=8)
    ax.axis("off")
fig.suptitle("the first training images" + ("" if HAS_GPU and not USE_GENERATED_DATA
                                            else " (generated: random pixels)"))
plt.show()

# %% [markdown]
# ## 4. Run it
#
# Choose the optimisers and their settings and press **Run**. The progress bar counts the
# steps of all runs; the curves redraw as each evaluation arrives (test loss and accuracy,
# against epochs and against the wall-clock of the training steps). At the end comes the
# results table: median and range over seeds, and the time and work each optimiser needed to
# reach the target validation loss.
#
# * $K$, $r$ and $\lambda$ apply to the three SeriesSFN rows; the batch size to all (0 keeps
#   each row's own: the paper's 3,200 for SGD and the series and 800 for Adam; 256 for
#   AdaHessian and Sophia-H, 3,200 for L-BFGS and 512 for K-FAC, from their sources).
# * Every distinct setting runs in its own folder under `runs/notebook06`; pressing **Run**
#   again with the same settings **resumes** an interrupted run from its last checkpoint
#   (or shows a finished one). Interrupt the kernel to stop a run.
# * On a GPU node the same run works from the command line, e.g.
#   `python -m sfn_teach.bench run benchmarks/cifar10_resnet18_quick.toml --resume`.
# * The rows marked "paper's V rule" may warn in their first steps that *the series is
#   diverging*. That is the paper's scale rule at work: $V_t = \max(V_{t-1}, \|H^2 g\|/\|g\|)$
#   starts at $V_0 = 100$, below $\lambda_{\max}^2/2$ here, and only bounds
#   $\lambda_{\max}(H^2)$ from below, so an early step can overshoot; the Levenberg–Marquardt
#   damping and the growing $V$ recover within a few steps. The warning says so rather than
#   hiding it. The default rule stops a diverging series at its first growing term and sums
#   it again with a larger $V$ (counted in the HVPs).

# %%
budget = "epochs" if "epochs" in config["train"] else "steps"
panel = BenchmarkPanel(
    config, OUT_DIR, fast=FAST, augment_path=("data", "augment"),
    controls=("optimizers", "num_terms", "acceleration_order", "damping", "batch_size",
              budget, "seeds", "augment"),
)
panel.batch_size.value = 0
if run_on_open:
    panel.run()
panel

# %% [markdown]
# ## 5. The results
#
# The same records, as the runner's figures: the median over seeds with its range, against
# steps, wall-clock and gradient-equivalents, and what the optimisers' own statistics did.
# Report accuracy as well as loss: the authors' code logged only the loss, yet a lower loss
# does not always mean more correct answers.

# %%
if panel.result is not None:
    display(Markdown(panel.result.table))
    for key in ("test_loss", "test_accuracy"):
        display(plot_curves(panel.result.records, key))
    display(plot_optimizer_stats(panel.result.records))
else:
    print("Press Run above; the figures appear here when the benchmark has finished.")

# %% [markdown]
# **The work columns.** Each record counts what its steps did (`gradients`, `hvps`,
# `forward`, K-FAC's `factor_updates` and `preconditionings`) and weighs it by the config's
# `[cost]` (`grad_equivalents`). The next cell reads them back for the first seed of every
# row and checks them against the rules of section 2: SGD and Adam one gradient a step;
# AdaHessian one gradient and one Hessian-vector product a step ($1 + c_{HVP}$); Sophia-H a
# product on steps 1, 11, 21, … only (in a smoke run of two or three steps, on the first);
# L-BFGS one gradient per closure evaluation, more than one a step; K-FAC $1 + c_P$ a step
# and $1 + c_{KF}$ more on each curvature step (every step in the smoke config, whose K-FAC
# row keeps the default interval 1; every tenth in the GPU configs). On the CPU smoke run the
# numbers show only that the counting works: a network of width 4 on 30 generated images
# measures nothing.

# %%
if panel.result is not None:
    specs = {spec.name: spec for spec in panel.result.config.optimizers}
    first_seed = panel.result.config.seeds[0]
    last = {r["optimizer"]: r for r in panel.result.records if r["seed"] == first_seed}
    counts = {"gradients": "gradients", "hvps": "HVPs", "forward": "forward",
              "factor_updates": "factor upd.", "preconditionings": "precond."}
    print(f"{'optimiser':>44} {'steps':>5} " + " ".join(f"{c:>11}" for c in counts.values())
          + f" {'g/step':>7}")
    for name, r in last.items():
        steps, kind = r["step"], specs[name].type
        hp = {**OPTIMIZERS[kind].defaults, **specs[name].hyperparameters}
        print(f"{name:>44} {steps:>5} " + " ".join(f"{r[c]:>11}" for c in counts)
              + f" {r['grad_equivalents'] / steps:>7.2f}")
        if kind in ("sgd", "adam"):
            assert r["gradients"] == steps and r["grad_equivalents"] == steps
        elif kind == "adahessian":
            assert r["gradients"] == r["hvps"] == steps
        elif kind == "sophia_h":
            assert r["hvps"] == -(-steps // hp["update_period"]) and r["gradients"] == steps
        elif kind == "lbfgs":
            assert r["gradients"] > steps  # several closure evaluations a step
        elif kind == "kfac":
            curvature_steps = -(-steps // hp["curvature_interval"])
            assert r["factor_updates"] == curvature_steps and r["preconditionings"] == steps
            assert r["gradients"] == steps + curvature_steps

# %% [markdown]
# **What was and was not run.** The test suite runs this notebook on a CPU with the smoke
# configuration. The CIFAR-10 download is tested against a local HTTP server serving a
# generated archive in the exact binary format; the real 170 MB archive and full-length runs
# need a machine with internet access and a GPU. Treat time estimates in the configs as
# estimates until `bench/gpu_resnet18.py` has measured your GPU.

# %% [markdown]
# ## 6. More GPUs
#
# With the batch split over $P$ GPUs, each rank computes the loss, the gradient and the
# products *on its shard*; the step must use their averages over all ranks. The gradient of
# SGD is averaged once per step. For the series, every one of the $2(K-1)$ Hessian-vector
# products is an average too, and so is the loss that Levenberg–Marquardt re-evaluates: each
# needs its own all-reduce of a parameter-sized vector (`sfn_teach.distributed`). BatchNorm
# must use the statistics of the whole batch (a synchronised BatchNorm) for the update to equal
# the single-GPU one:
#
# `torchrun --nproc-per-node 4 -m sfn_teach.bench run benchmarks/cifar10_resnet18_quick.toml`

# %% [markdown]
# ## Exercises
#
# **Exercise 1.** One step of the paper's adaptive SeriesSFN ($K = 5$, Levenberg–Marquardt
# damping on) with $c_{HVP} = 2.7$: how many gradient-equivalents?

# %%
my_cost = ...
exercises.check_step_cost(5, 2.7, True, my_cost)

# %% [markdown]
# **Exercise 2.** How many Hessian-vector products does one epoch of that optimiser take, with
# 45,000 training images and batches of 3,200 (an incomplete last batch is dropped)?

# %%
my_hvps = ...
exercises.check_hvps_per_epoch(45_000, 3200, 5, my_hvps)

# %% [markdown]
# **Exercise 3.** Data-parallel over 4 GPUs: how many all-reduces does one step of the
# adaptive SeriesSFN ($K = 5$, with Levenberg–Marquardt damping) need?

# %%
my_allreduces = ...
exercises.check_allreduces_per_step(5, True, my_allreduces)

# %% [markdown]
# ## Summary
#
# * A SeriesSFN step costs $1 + 2(K-1)c_{HVP}$ gradients (+ ½ with damping): with the
#   paper's $K = 5$ about 23 gradients, so it has to make much more progress per step than
#   SGD to be worth it per unit of time — the paper's claim is that, tuned, it is
#   *comparable* to SGD and Adam, not better everywhere.
# * The other rows are counted by the same rules: AdaHessian $1 + c_{HVP}$ a step, Sophia-H
#   an HVP every tenth step, L-BFGS a gradient per closure evaluation, and K-FAC its two
#   backward passes plus its factor work, measured ($c_{KF}$, $c_P$ in each config's
#   `[cost]`): at a batch of 512 about 1.4 gradients a step on average.
# * The benchmark runs from a panel or the command line, live, checkpointed and resumable,
#   and reports loss and accuracy against epochs, time and work.
# * On several GPUs every product of the series must be averaged over the ranks: $2(K-1)$
#   all-reduces per step besides the gradient's, with synchronised BatchNorm.
