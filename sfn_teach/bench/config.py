"""Benchmark configs: read a TOML or JSON file and validate all of it before any training.

A config names a task (dataset), a model, a training budget, seeds and a list of optimisers
with their hyperparameters (see ``benchmarks/digits_mlp.toml``). :func:`validate_config` checks
every field and raises :class:`ConfigError` naming the first bad one (``optimizers[2].lr``),
its value and what is allowed; optimiser hyperparameters are checked by constructing the
optimiser once on a dummy parameter, so the rules are the optimiser's own. Schema::

    name = "digits_mlp"          # optional; default: the file name without suffix
    task = "digits"              # a key of sfn_teach.data.DATASETS: "digits", "cifar10",
                                 # "cifar10_synthetic"
    dtype = "float64"            # "float32" (default) or "float64"
    device = "cpu"               # "cpu" (default), "cuda", "cuda:1", "auto" (CUDA if present)
    compile = false              # torch.compile the training forward (falls back to eager)

    [data]                       # the task's options (sfn_teach.data.DATASETS[task].options):
                                 # digits: dir; cifar10: augment = false,
                                 # validation_fraction = 0.1, split_seed = 0, dir, url,
                                 # download = true, generated = false, num_train, num_test;
                                 # cifar10_synthetic: the same but the file options
    [model]                      # type "mlp": hidden = [24], activation = "tanh",
                                 # init_scale = 1.0 (defaults; sfn_teach.models.MLP);
                                 # type "resnet18": width = 64, channels_last = false
                                 # (channels_last is used on CUDA only, see
                                 # sfn_teach.device.memory_format)
    [precision]                  # autocast = "none" | "bf16" (first-order forward passes);
                                 # hvp = "fp32" | "bf16" (curvature steps; bf16 needs
                                 # autocast = "bf16"); tf32 = false; hvp_tf32 = false
                                 # (sfn_teach.device.Precision)
    [train]                      # epochs = E or steps = N (one of them); batch_size (default
                                 # for every optimiser); evals = 20 (evaluations after step 0,
                                 # evenly spaced); checkpoint_every = 1 (in evaluations);
                                 # seeds = [0, 1, 2]; eval_batch_size (default: the task's,
                                 # whole splits for digits); warmup_steps (steps whose time is
                                 # not in wall_clock; default 2 on CUDA, 0 on a CPU);
                                 # time_budget (optional, s of training time, wall_clock: a
                                 # run stops after the first step that reaches it; the step
                                 # budget stays the cap; how many steps fit depends on the
                                 # machine, so such a run is not reproducible step for step);
                                 # curvature_every (optional, in evaluations: the curvature
                                 # diagnostics of sfn_teach.train.curvature_diagnostics on the
                                 # first batch_size training examples at every n-th record;
                                 # needs batch_size and a model of at most
                                 # sfn_teach.hvp.DENSE_MAX_DIM parameters)
    [cost]                       # hvp, forward, kfac_curvature, kfac_precondition (sfn_teach.cost)
    [report]                     # target_loss (default 0.1), target_split = "val"
    [fast]                       # steps = 4, evals = 2, seeds = the first two (fast mode)

    [[optimizers]]               # one table per optimiser
    name = "Adam"                # label in tables and plots, unique
    type = "adam"                # a key of sfn_teach.registry.OPTIMIZERS
    batch_size = 400             # optional override of train.batch_size
    lr = 1e-3                    # every other key is a hyperparameter of the optimiser

    [tune]                       # settings of `bench tune`: read and validated by
                                 # sfn_teach.bench.tune (not used by `bench run`)

Fields can be overridden before validation by dotted paths (:mod:`sfn_teach.bench.overrides`,
the CLI's ``--set``). The fields of :data:`LOCATION_FIELDS` say where verified data is found,
not what is computed: a run directory may be resumed with other values for them.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, field, replace
from pathlib import Path

import torch

from ..checks import ArgumentError
from ..data import DATASETS, SPLITS
from ..device import Precision, memory_format, resolve_device
from ..hvp import DENSE_MAX_DIM
from ..models import MLP, count_parameters, resnet18_cifar
from ..registry import OPTIMIZERS
from ..train import CostModel
from .fields import (
    ConfigError,
    check_choice,
    check_int,
    check_positive_number,
    check_table,
)
from .overrides import apply_overrides

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10: the backport, a dependency there
    import tomli as tomllib

__all__ = [
    "DENSE_OPTIMIZERS", "DTYPES", "FAST_DEFAULTS", "LOCATION_FIELDS", "MODELS",
    "PRECISION_DEFAULTS", "TOP_LEVEL", "WARMUP_STEPS", "BenchmarkConfig", "OptimizerSpec",
    "build_model", "channels_last_ignored", "load_config", "model_memory_format", "read_config",
    "validate_config"
]

DTYPES = {"float32": torch.float32, "float64": torch.float64}
DENSE_OPTIMIZERS = ("exact_sfn", "newton")  # they form the Hessian: DENSE_MAX_DIM parameters
TOP_LEVEL = ("name", "task", "dtype", "device", "compile", "data", "model", "precision",
             "train", "cost", "report", "fast", "optimizers", "tune")
FAST_DEFAULTS = {"steps": 4, "evals": 2}
PRECISION_DEFAULTS = {"autocast": "none", "hvp": "fp32", "tf32": False, "hvp_tf32": False}
WARMUP_STEPS = {"cuda": 2, "cpu": 0}  # default train.warmup_steps per device type
LOCATION_FIELDS = ("data.dir", "data.url", "data.download")
"""Where the data is found and fetched from; the data itself is verified (SHA-256)."""


# --------------------------------------------------------------------------------------------
# Field checks of this schema (the shared ones are in sfn_teach.bench.fields)
# --------------------------------------------------------------------------------------------


def _seeds(value, path):
    if not isinstance(value, list) or not value:
        raise ConfigError(path, f"must be a non-empty list of integers, got {value!r}")
    seeds = [check_int(seed, f"{path}[{i}]", 0, 2**63 - 1) for i, seed in enumerate(value)]
    if len(set(seeds)) != len(seeds):
        raise ConfigError(path, f"must not repeat a seed, got {seeds}")
    return tuple(seeds)


def _options(value, path, defaults, extra=()):
    """The table ``value`` with ``defaults`` filled in; each field of its default's type.

    An integer is accepted where the default is a float; a list default is a list of positive
    integers. ``extra`` names further allowed fields that the caller checks itself.
    """
    table = check_table(value, path, (*extra, *defaults))
    options = dict(defaults)
    for key, default in defaults.items():
        if key not in table:
            continue
        item = table[key]
        if type(default) is float and type(item) is int:
            item = float(item)
        if type(item) is not type(default):
            raise ConfigError(f"{path}.{key}", f"must be a {type(default).__name__} "
                                               f"(like the default {default!r}), got {item!r}")
        if isinstance(default, list):
            for i, entry in enumerate(item):
                check_int(entry, f"{path}.{key}[{i}]", 1)
        options[key] = item
    return options


# --------------------------------------------------------------------------------------------
# The validated config
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class OptimizerSpec:
    """One optimiser of a benchmark: ``OPTIMIZERS[type](params, **hyperparameters)``
    (:data:`sfn_teach.registry.OPTIMIZERS`)."""

    name: str
    type: str
    batch_size: int
    hyperparameters: dict
    slug: str  # the name as a directory name: lower case, runs of other characters -> '-'

    def build(self, model, process_group=None):
        """The optimiser over ``model``'s parameters (over ``model`` itself, with ``data_size``
        the batch size, for an entry that ``needs_model``: K-FAC).

        ``process_group`` (data parallelism) goes to a curvature optimiser, which averages its
        gradient and products over the ranks itself; a ``torch.optim`` optimiser gets averaged
        gradients from the trainer instead (:class:`sfn_teach.train.Trainer`).
        """
        entry = OPTIMIZERS[self.type]
        parallel = {} if process_group is None or entry.uses_backward else {
            "process_group": process_group}
        if entry.needs_model:
            return entry(model, **self.hyperparameters, **parallel, data_size=self.batch_size)
        return entry(model.parameters(), **self.hyperparameters, **parallel)


@dataclass(frozen=True)
class BenchmarkConfig:
    """A validated benchmark (see the module docstring for the fields and defaults)."""

    name: str
    task: str
    data: dict  # the task's options, defaults filled in
    sizes: dict  # examples per part, {"train": …, "val": …, "test": …}
    dtype: torch.dtype
    device: torch.device
    compile: bool
    precision: Precision
    model: dict
    epochs: int | None
    steps: int | None
    evals: int
    checkpoint_every: int
    seeds: tuple
    eval_batch_size: int | None
    warmup_steps: int
    batch_size: int | None  # train.batch_size: the default, and the diagnostic batch
    time_budget: float | None  # s of training time per run (None: the step budget alone)
    curvature_every: int | None  # the curvature diagnostics' period in records (None: off)
    cost: CostModel
    target_loss: float
    target_split: str
    optimizers: tuple
    fast: dict
    raw: dict = field(repr=False)  # the config as read, for the run directory

    def num_steps(self, spec: OptimizerSpec) -> int:
        """The step budget of ``spec``: ``steps``, or ``epochs × ⌊N_train / batch_size⌋``."""
        if self.steps is not None:
            return self.steps
        return self.epochs * (self.sizes["train"] // spec.batch_size)

    def eval_every(self, spec: OptimizerSpec) -> int:
        """Steps between evaluations: ``⌈num_steps / evals⌉``."""
        return max(1, -(-self.num_steps(spec) // self.evals))

    def runs(self):
        """Every ``(spec, seed)`` of the benchmark, optimiser by optimiser."""
        return [(spec, seed) for spec in self.optimizers for seed in self.seeds]

    def fast_version(self) -> BenchmarkConfig:
        """The same benchmark with the tiny budget of ``[fast]`` (for tests and previews)."""
        return replace(self, epochs=None, steps=self.fast["steps"], evals=self.fast["evals"],
                       seeds=self.fast["seeds"], checkpoint_every=1)


def _mlp(spec, info):
    """The MLP ``n_in → hidden… → num_classes`` of a ``[model]`` table with type "mlp"."""
    sizes = (math.prod(info.input_shape), *spec["hidden"], info.num_classes)
    return MLP(sizes, activation=spec["activation"], init_scale=spec["init_scale"])


def _resnet18(spec, info):
    """The CIFAR ResNet-18 of a ``[model]`` table with type "resnet18" (image tasks only)."""
    if len(info.input_shape) != 3:
        raise ArgumentError("type", f"resnet18 needs image inputs (channels, height, width), "
                                    f"but task {info.name!r} has inputs of shape "
                                    f"{info.input_shape}")
    return resnet18_cifar(info.num_classes, spec["width"], in_channels=info.input_shape[0])


MODELS = {
    "mlp": ({"hidden": [24], "activation": "tanh", "init_scale": 1.0}, _mlp),
    "resnet18": ({"width": 64, "channels_last": False}, _resnet18),
}
"""Model types a config can name: ``type -> (defaults, build(spec, dataset_info))``."""


def build_model(config: BenchmarkConfig, spec: OptimizerSpec | None = None) -> torch.nn.Module:
    """The config's model, in its dtype on its device (parameters from the current RNG), for
    the optimiser ``spec``.

    With ``channels_last`` on a CUDA device the convolution weights are stored channels-last;
    convolutions then produce channels-last outputs from ordinary (contiguous) input batches, so
    the data needs no conversion. On a CPU, and for an optimiser whose registry entry
    ``needs_contiguous`` (L-BFGS, K-FAC), the model stays contiguous
    (:func:`sfn_teach.device.memory_format`; :func:`channels_last_ignored` says so).
    """
    build = MODELS[config.model["type"]][1]
    model = build(config.model, DATASETS[config.task])
    return model.to(device=config.device, dtype=config.dtype,
                    memory_format=model_memory_format(config, spec))


def model_memory_format(config: BenchmarkConfig, spec: OptimizerSpec | None = None):
    """How :func:`build_model` stores the model for ``spec``: channels-last if the config asks
    for it, the device allows it and the optimiser does not need contiguous gradients."""
    wanted = bool(config.model.get("channels_last"))
    if spec is not None and OPTIMIZERS[spec.type].needs_contiguous:
        wanted = False
    return memory_format(config.device, wanted)


def channels_last_ignored(config: BenchmarkConfig) -> str | None:
    """A note if the config asks for ``channels_last`` where it is not used: on a device other
    than CUDA, or for the optimisers that need contiguous gradients."""
    if not config.model.get("channels_last"):
        return None
    if memory_format(config.device, True) != torch.channels_last:
        return (f"model.channels_last is ignored on {config.device.type}: models are stored "
                "channels-last on CUDA only (on a CPU, oneDNN's AVX2 kernels crash in its "
                "convolution gradients)")
    contiguous = [spec.name for spec in config.optimizers
                  if OPTIMIZERS[spec.type].needs_contiguous]
    if contiguous:
        return (f"model.channels_last is not used for {', '.join(contiguous)}: their libraries "
                "flatten gradients with view(-1), which channels-last weights' gradients refuse")
    return None


def _check_optimizer(kind, hyperparameters, path):
    """Construct the optimiser once on a dummy parameter: its refusal names the field."""
    if "data_size" in hyperparameters:
        raise ConfigError(f"{path}.data_size", "is set by the benchmark (the batch_size)")
    try:
        entry = OPTIMIZERS[kind]
        dummy = (torch.nn.Sequential(torch.nn.Linear(1, 1)) if entry.needs_model
                 else [torch.zeros(1, requires_grad=True)])
        entry(dummy, **hyperparameters)
    except ArgumentError as error:
        raise ConfigError.within(path, error, f"invalid for {kind}: ") from None
    except (TypeError, ValueError) as error:  # torch.optim's own checks name no field
        raise ConfigError(path, f"invalid hyperparameters for {kind}: {error}") from None


def _model(raw, info):
    """The validated ``[model]`` table (defaults filled in) and its number of parameters."""
    kind = check_choice(raw.get("type", "mlp") if isinstance(raw, dict) else None, "model.type",
                   tuple(MODELS))
    defaults, build = MODELS[kind]
    spec = {"type": kind, **_options(raw, "model", defaults, extra=("type",))}
    try:
        with torch.device("meta"):  # shapes only: no memory, no initialisation
            model = build(spec, info)
    except ArgumentError as error:
        raise ConfigError.within("model", error) from None
    return spec, count_parameters(model)


def _data(raw, info):
    """The validated ``[data]`` table of the task (defaults filled in) and its part sizes."""
    options = _options(raw, "data", info.options)
    try:
        sizes = info.sizes(**options)
    except ArgumentError as error:
        raise ConfigError.within("data", error) from None
    return options, sizes


def _precision(raw):
    """The ``[precision]`` table as a :class:`sfn_teach.device.Precision`."""
    table = _options(raw, "precision", PRECISION_DEFAULTS)
    try:
        return Precision(**table)
    except ArgumentError as error:
        raise ConfigError.within("precision", error) from None


def _optimizer(raw, i, default_batch_size, num_train):
    path = f"optimizers[{i}]"
    if not isinstance(raw, dict):
        raise ConfigError(path, f"must be a table, got {raw!r}")
    for key in ("name", "type"):
        if key not in raw:
            raise ConfigError(f"{path}.{key}", "missing (required)")
    if not isinstance(raw["name"], str) or not raw["name"].strip():
        raise ConfigError(f"{path}.name", f"must be a non-empty string, got {raw['name']!r}")
    kind = check_choice(raw["type"], f"{path}.type", tuple(OPTIMIZERS))
    batch_size = raw.get("batch_size", default_batch_size)
    if batch_size is None:
        raise ConfigError(f"{path}.batch_size", "missing: set it here or in train.batch_size")
    check_int(batch_size, f"{path}.batch_size", 1, num_train)
    hyperparameters = {k: v for k, v in raw.items() if k not in ("name", "type", "batch_size")}
    for key, value in hyperparameters.items():
        if isinstance(value, list):  # TOML arrays, e.g. Adam's betas
            hyperparameters[key] = tuple(value)
    _check_optimizer(kind, hyperparameters, path)
    slug = re.sub(r"[^a-z0-9]+", "-", raw["name"].lower()).strip("-")
    return OptimizerSpec(raw["name"], kind, batch_size, hyperparameters, slug)


def validate_config(raw: dict, name: str = "benchmark") -> BenchmarkConfig:
    """Check every field of ``raw`` and return the :class:`BenchmarkConfig`.

    Raises :class:`ConfigError` naming the first bad field; nothing is trained or loaded.
    """
    check_table(raw, "", TOP_LEVEL, required=("task", "train", "optimizers"))
    name = raw.get("name", name)
    if not isinstance(name, str) or not re.fullmatch(r"[A-Za-z0-9_.-]+", name):
        raise ConfigError("name", f"must be letters, digits, '_', '.' or '-', got {name!r}")
    task = check_choice(raw["task"], "task", tuple(DATASETS))
    info = DATASETS[task]
    data, sizes = _data(raw.get("data", {}), info)
    dtype = DTYPES[check_choice(raw.get("dtype", "float32"), "dtype", tuple(DTYPES))]
    try:
        device = resolve_device(raw.get("device", "cpu"))
    except ArgumentError as error:
        raise ConfigError.within("", error) from None
    compile_model = raw.get("compile", False)
    if not isinstance(compile_model, bool):
        raise ConfigError("compile", f"must be true or false, got {compile_model!r}")
    precision = _precision(raw.get("precision", {}))
    model, num_parameters = _model(raw.get("model", {}), info)

    train = check_table(raw["train"], "train", ("epochs", "steps", "batch_size", "evals",
                                           "checkpoint_every", "seeds", "eval_batch_size",
                                           "warmup_steps", "time_budget", "curvature_every"),
                   required=("seeds",))
    if ("epochs" in train) == ("steps" in train):
        raise ConfigError("train.epochs", "give exactly one of train.epochs and train.steps")
    epochs = check_int(train["epochs"], "train.epochs", 1) if "epochs" in train else None
    steps = check_int(train["steps"], "train.steps", 1) if "steps" in train else None
    default_batch_size = train.get("batch_size")
    if default_batch_size is not None:
        check_int(default_batch_size, "train.batch_size", 1, sizes["train"])
    evals = check_int(train.get("evals", 20), "train.evals", 1)
    checkpoint_every = check_int(train.get("checkpoint_every", 1), "train.checkpoint_every", 1)
    seeds = _seeds(train["seeds"], "train.seeds")
    eval_batch_size = train.get("eval_batch_size", info.eval_batch_size)
    if eval_batch_size is not None:
        check_int(eval_batch_size, "train.eval_batch_size", 1)
    warmup_steps = check_int(train.get("warmup_steps", WARMUP_STEPS[device.type]),
                        "train.warmup_steps", 0)
    time_budget = train.get("time_budget")
    if time_budget is not None:
        time_budget = check_positive_number(time_budget, "train.time_budget")
    curvature_every = train.get("curvature_every")
    if curvature_every is not None:
        check_int(curvature_every, "train.curvature_every", 1)
        if num_parameters > DENSE_MAX_DIM:
            raise ConfigError("train.curvature_every", f"the curvature diagnostics form the "
                              f"dense Hessian, but the model has {num_parameters} parameters "
                              f"(at most sfn_teach.hvp.DENSE_MAX_DIM = {DENSE_MAX_DIM})")
        if default_batch_size is None:
            raise ConfigError("train.batch_size", "missing: train.curvature_every needs it (the "
                              "diagnostic batch is the first train.batch_size training examples)")

    cost = check_table(raw.get("cost", {}), "cost", tuple(CostModel.__dataclass_fields__))
    cost = CostModel(**{name: check_positive_number(cost.get(name, getattr(CostModel, name)),
                                                    f"cost.{name}", allow_zero=name != "hvp")
                        for name in CostModel.__dataclass_fields__})
    report = check_table(raw.get("report", {}), "report", ("target_loss", "target_split"))
    target_loss = check_positive_number(report.get("target_loss", 0.1), "report.target_loss")
    target_split = check_choice(report.get("target_split", "val"), "report.target_split",
                                SPLITS)

    fast = {**FAST_DEFAULTS, "seeds": list(seeds[:2]),
            **check_table(raw.get("fast", {}), "fast", ("steps", "evals", "seeds"))}
    fast = {"steps": check_int(fast["steps"], "fast.steps", 1),
            "evals": check_int(fast["evals"], "fast.evals", 1),
            "seeds": _seeds(fast["seeds"], "fast.seeds")}

    if not isinstance(raw["optimizers"], list) or not raw["optimizers"]:
        raise ConfigError("optimizers", "must be a non-empty list of tables ([[optimizers]])")
    optimizers = tuple(_optimizer(entry, i, default_batch_size, sizes["train"])
                       for i, entry in enumerate(raw["optimizers"]))
    for i, spec in enumerate(optimizers):
        if any(spec.slug == other.slug for other in optimizers[:i]):
            raise ConfigError(f"optimizers[{i}].name", f"{spec.name!r} is not unique (names "
                                                       "must differ in letters or digits)")
    for i, spec in enumerate(optimizers):
        if spec.type in DENSE_OPTIMIZERS and num_parameters > DENSE_MAX_DIM:
            raise ConfigError(f"optimizers[{i}].type", f"{spec.type} forms the dense Hessian, "
                              f"but the model has {num_parameters} parameters (at most "
                              f"sfn_teach.hvp.DENSE_MAX_DIM = {DENSE_MAX_DIM})")

    return BenchmarkConfig(
        name=name, task=task, data=data, sizes=sizes, dtype=dtype, device=device,
        compile=compile_model, precision=precision, model=model, epochs=epochs,
        steps=steps, evals=evals, checkpoint_every=checkpoint_every, seeds=seeds,
        eval_batch_size=eval_batch_size, warmup_steps=warmup_steps,
        batch_size=default_batch_size, time_budget=time_budget, curvature_every=curvature_every,
        cost=cost,
        target_loss=target_loss,
        target_split=target_split, optimizers=optimizers, fast=fast, raw=raw,
    )


def read_config(path) -> dict:
    """The raw contents of a ``.toml`` or ``.json`` config file (not validated yet)."""
    path = Path(path)
    if path.is_dir():
        raise ConfigError("file", f"{path} is a folder, not a config file")
    if not path.is_file():
        raise ConfigError("file", f"{path} does not exist")
    if path.suffix not in (".toml", ".json"):
        raise ConfigError("file", f"{path} must end in .toml or .json")
    try:
        text = path.read_bytes().decode("utf-8")
    except UnicodeDecodeError as error:
        raise ConfigError("file", f"{path} is not UTF-8 text: {error}") from None
    if path.suffix == ".json":
        try:
            return json.loads(text)
        except json.JSONDecodeError as error:
            raise ConfigError("file", f"{path} is not valid JSON: {error}") from None
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as error:
        raise ConfigError("file", f"{path} is not valid TOML: {error}") from None


def load_config(path, overrides=None) -> BenchmarkConfig:
    """Read and validate a ``.toml`` or ``.json`` config file (name: the file's stem).

    ``overrides`` (``{"field.path": value}``) are applied first (:func:`apply_overrides`).
    """
    raw = read_config(path)
    if overrides:
        raw = apply_overrides(raw, overrides)
    return validate_config(raw, name=Path(path).stem)
