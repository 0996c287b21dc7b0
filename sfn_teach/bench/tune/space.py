"""The search spaces of the tuner: what the trials of each optimiser sample.

Written in a config's ``[tune.space."<name>"]`` tables (:mod:`.settings`) like the defaults
here (the paper's)::

    series_sfn    num_terms ~ U{1..20}; acceleration_order ~ U{0..⌊(K−1)/2⌋} given the trial's K;
                  damping (λ₀) ~ logU[1e-8, 1]; unadaptive also lr (α) ~ logU[1e-3, 5] and
                  momentum (μ) ~ logU[1e-3, 0.95]
    sgd           lr ~ logU[1e-6, 1e-1]
    adam          lr ~ logU[1e-6, 1]; eps ~ logU[1e-10, 10]; one_minus_beta1 (1 − β₁) ~
                  logU[1e-3, 1]; one_minus_beta2 (1 − β₂) ~ logU[1e-4, 1]
    exact_sfn,    damping (λ₀) ~ logU[1e-8, 1] (the paper gives none; SeriesSFN's range)
    newton
    adahessian    lr ~ logU[1e-3, 1]; hessian_power (k) ~ U[0.5, 1] (Yao et al. 2021,
                  AdaHessian: α = 0.15 on CIFAR-10 and the Hessian power k ∈ [0.5, 1] studied
                  there; the range of α is this library's, about a decade either side)
    sophia_h      lr ~ logU[1e-4, 1e-1]; p (the clip ρ) ~ logU[1e-3, 1e-1] (Liu et al. 2023,
                  Sophia: ρ ≈ 0.01–0.05 and α a small multiple of AdamW's; pytorch-optimizer's
                  defaults α = 0.06, ρ = 0.01 lie inside)
    lbfgs         lr ~ logU[1e-2, 1]; history_size ~ choice{5, 10, 20, 100} (torch.optim.LBFGS
                  docs: lr = 1 and history 100 by default; with line_search_fn = "strong_wolfe"
                  the step is found by the line search and lr = 1 is its usual start)
    image tasks   also batch_size ~ choice{50, 100, 200, 400, 800, 1600, 3200} (≤ N_train)

A parameter's distribution is a table with one key: ``loguniform = [a, b]``, ``uniform =
[a, b]``, ``randint = [a, b]`` (integers ``a..b``, both included), ``choice = [v, …]``, or for
``acceleration_order`` ``randint = [0, "max"]`` (``U{0..⌊(K−1)/2⌋}``). Every other
hyperparameter keeps the value in the optimiser's table.

Every trial is a benchmark config of its own (:func:`tuned_raw`), so each space is checked at
its extremes by the config's validator before any trial starts (:func:`search_space`).
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from ...data import DATASETS
from ...registry import OPTIMIZERS
from ..config import validate_config
from ..fields import ConfigError, check_int, check_number, check_table
from ..overrides import apply_overrides

__all__ = [
    "ADAM_BETAS", "DEFAULT_SPACES", "IMAGE_BATCH_SIZES", "LAMBDA_SPACE", "UNADAPTIVE_SPACE",
    "Distribution", "default_space", "fixed_num_terms", "parse_distribution", "search_space",
    "tuned_raw"
]

IMAGE_BATCH_SIZES = [50, 100, 200, 400, 800, 1600, 3200]
LAMBDA_SPACE = {"damping": {"loguniform": [1e-8, 1.0]}}
DEFAULT_SPACES = {
    "series_sfn": {"num_terms": {"randint": [1, 20]}, "acceleration_order": {"randint": [0, "max"]},
                   **LAMBDA_SPACE},
    "sgd": {"lr": {"loguniform": [1e-6, 1e-1]}},
    "adam": {"lr": {"loguniform": [1e-6, 1.0]}, "eps": {"loguniform": [1e-10, 10.0]},
             "one_minus_beta1": {"loguniform": [1e-3, 1.0]},
             "one_minus_beta2": {"loguniform": [1e-4, 1.0]}},
    "exact_sfn": LAMBDA_SPACE,
    "newton": LAMBDA_SPACE,
    "adahessian": {"lr": {"loguniform": [1e-3, 1.0]}, "hessian_power": {"uniform": [0.5, 1.0]}},
    "sophia_h": {"lr": {"loguniform": [1e-4, 1e-1]}, "p": {"loguniform": [1e-3, 1e-1]}},
    "lbfgs": {"lr": {"loguniform": [1e-2, 1.0]}, "history_size": {"choice": [5, 10, 20, 100]}},
    # K-FAC (Martens & Grosse 2015; ASDL's examples): α and damping λ on log scales, μ ≤ 0.95
    "kfac": {"lr": {"loguniform": [1e-3, 1.0]}, "damping": {"loguniform": [1e-5, 1e-1]},
             "momentum": {"uniform": [0.0, 0.95]}},
}
"""The search space of each optimiser type (the paper's; for AdaHessian, Sophia-H and L-BFGS
their own papers' and documentation's, see the module docstring), in the config's notation."""
UNADAPTIVE_SPACE = {"lr": {"loguniform": [1e-3, 5.0]}, "momentum": {"loguniform": [1e-3, 0.95]}}
"""Added for SeriesSFN without ``adaptive``: its fixed α and μ are tuned too."""
ADAM_BETAS = {"one_minus_beta1": 0, "one_minus_beta2": 1}
"""Adam's search parameters ``1 − β`` and the index of the β in ``betas`` each one sets."""


@dataclass(frozen=True)
class Distribution:
    """A search distribution as written in a config: ``kind`` and its ``values``.

    ``loguniform``/``uniform`` ``(a, b)``, ``randint`` ``(a, b)`` with both ends included (``b``
    may be ``"max"`` for ``acceleration_order``: the largest order that the trial's ``K``
    allows, ``⌊(K−1)/2⌋``), ``choice`` ``(v, …)``.
    """

    kind: str
    values: tuple

    def describe(self) -> str:
        """Its notation in the docs: ``logU[1e-06, 0.1]``, ``U{1..20}``, ``{50, 100}``."""
        low, high = (self.values + (None,))[:2]
        if self.kind == "loguniform":
            return f"logU[{low:g}, {high:g}]"
        if self.kind == "uniform":
            return f"U[{low:g}, {high:g}]"
        if self.kind == "randint":
            return f"U{{{low}..{'⌊(K−1)/2⌋' if high == 'max' else high}}}"
        return "{" + ", ".join(map(str, self.values)) + "}"

    def extremes(self, num_terms: int) -> tuple:
        """The smallest and largest value it can take (every value of a choice), given ``K``."""
        if self.kind == "choice":
            return self.values
        low, high = self.values
        return low, (num_terms - 1) // 2 if high == "max" else high

    def to_ray(self, tune, rng: random.Random, fixed_terms: int):
        """The Ray Tune domain; ``randint [0, "max"]`` reads the trial's ``num_terms`` (else
        ``fixed_terms``) and draws from ``rng``."""
        if self.kind == "choice":
            return tune.choice(list(self.values))
        low, high = self.values
        if self.kind == "loguniform":
            return tune.loguniform(low, high)
        if self.kind == "uniform":
            return tune.uniform(low, high)
        if high == "max":
            return tune.sample_from(
                lambda params: rng.randint(0, (params.get("num_terms", fixed_terms) - 1) // 2))
        return tune.randint(low, high + 1)  # Ray's upper end is excluded


def _bound(value, path, integer):
    """An end of a range: an integer for ``randint``, else any number (as a float)."""
    return check_int(value, path) if integer else check_number(value, path)


def parse_distribution(table, path, name) -> Distribution:
    """The :class:`Distribution` of the config table ``{kind = values}`` for parameter
    ``name``; :class:`ConfigError` naming ``path`` if it is not one."""
    kinds = ("loguniform", "uniform", "randint", "choice")
    check_table(table, path, kinds)
    if len(table) != 1:
        raise ConfigError(path, f"must have exactly one of {', '.join(kinds)}, got {table!r}")
    (kind, values), = table.items()
    if not isinstance(values, list) or not values:
        raise ConfigError(f"{path}.{kind}", f"must be a non-empty list, got {values!r}")
    if kind == "choice":
        return Distribution(kind, tuple(values))
    if len(values) != 2:
        raise ConfigError(f"{path}.{kind}", f"must be [low, high], got {values!r}")
    low = _bound(values[0], f"{path}.{kind}[0]", kind == "randint")
    if kind == "randint" and values[1] == "max":
        if name != "acceleration_order" or low != 0:
            raise ConfigError(f"{path}.{kind}", "[0, \"max\"] (orders up to ⌊(K−1)/2⌋) is only "
                              f"for acceleration_order, got {values!r} for {name}")
        return Distribution(kind, (0, "max"))
    high = _bound(values[1], f"{path}.{kind}[1]", kind == "randint")
    if not low < high or (kind == "loguniform" and low <= 0):
        rule = "0 < low < high" if kind == "loguniform" else "low < high"
        raise ConfigError(f"{path}.{kind}", f"must satisfy {rule}, got {values!r}")
    return Distribution(kind, (low, high))


def default_space(config, spec) -> dict:
    """The paper's search space for ``spec`` of ``config``, in the config's notation."""
    space = dict(DEFAULT_SPACES[spec.type])
    if spec.type == "series_sfn" and not spec.hyperparameters.get("adaptive", False):
        space.update(UNADAPTIVE_SPACE)
    if len(DATASETS[config.task].input_shape) == 3:
        space["batch_size"] = {"choice": [b for b in IMAGE_BATCH_SIZES
                                          if b <= config.sizes["train"]]}
    return space


def search_space(config, index, overrides) -> dict:
    """``{parameter: Distribution}`` of optimiser ``index``: the default space, updated by the
    ``[tune.space."<name>"]`` table ``overrides``; checked at its extremes."""
    spec = config.optimizers[index]
    path = f"tune.space.{spec.name}"
    allowed = ["batch_size",
               *(p for p in OPTIMIZERS[spec.type].defaults if p != "betas"),
               *(ADAM_BETAS if spec.type == "adam" else ())]
    check_table(overrides, path, allowed)
    tables = {**default_space(config, spec), **overrides}
    space = {name: parse_distribution(table, f"{path}.{name}", name)
             for name, table in tables.items()}
    terms = space.get("num_terms")
    fixed_terms = fixed_num_terms(spec)
    for end in (0, -1):  # every parameter at its smallest, then at its largest value
        largest_terms = terms.extremes(0)[end] if terms else fixed_terms
        corner = {name: d.extremes(largest_terms)[end] for name, d in space.items()}
        _check_trial(config, index, corner, path, space)
    for name, distribution in space.items():
        if distribution.kind == "choice":
            for value in distribution.values:
                _check_trial(config, index, {name: value}, path, space)
    return space


def fixed_num_terms(spec) -> int:
    """The optimiser's ``num_terms`` outside the search (its table's value or the default)."""
    if spec.type != "series_sfn":
        return 1
    return spec.hyperparameters.get("num_terms", OPTIMIZERS["series_sfn"].defaults["num_terms"])


def _check_trial(config, index, params, path, space):
    """Raise :class:`ConfigError` if a trial with ``params`` would have an invalid config."""
    try:
        validate_config(tuned_raw(config.raw, {index: params}, [0]), config.name)
    except ConfigError as error:
        name = error.field.rpartition(".")[2]
        field = f"{path}.{name}" if name in space else error.field
        raise ConfigError(field, f"a trial with {params} would be refused: {error}") from None


def tuned_raw(raw: dict, chosen: dict, seeds, time_budget: float | None = None) -> dict:
    """The raw config of a trial or of the re-runs: only the optimisers ``chosen`` (``{index:
    params}``), each with its sampled ``params`` set, trained with ``seeds`` and, if
    ``time_budget`` is given, for at most ``time_budget`` s of training time each
    (``train.time_budget``; ``None`` keeps the config's).

    ``one_minus_beta1``/``one_minus_beta2`` set Adam's ``betas``; ``[fast]`` takes the same
    seeds and the ``[tune]`` table is dropped.
    """
    overrides = {"train.seeds": list(seeds), "fast.seeds": list(seeds)}
    if time_budget is not None:
        overrides["train.time_budget"] = time_budget
    for index, params in chosen.items():
        params = dict(params)
        if any(name in params for name in ADAM_BETAS):
            default = OPTIMIZERS["adam"].defaults["betas"]
            betas = list(raw["optimizers"][index].get("betas", default))
            for name, position in ADAM_BETAS.items():
                if name in params:
                    betas[position] = 1.0 - params.pop(name)
            params["betas"] = betas
        overrides.update({f"optimizers[{index}].{key}": value for key, value in params.items()})
    tuned = apply_overrides(raw, overrides)
    tuned["optimizers"] = [tuned["optimizers"][index] for index in chosen]
    tuned.pop("tune", None)
    return tuned

