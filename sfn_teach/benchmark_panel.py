"""A panel (ipywidgets 8) that configures a benchmark, runs it live and shows its results.

Notebooks 04 and 05 use it: a student picks optimisers and settings, presses **Run** and
watches the runs train — a progress bar, curves of the test loss and accuracy against the
epoch and the wall-clock that redraw as each evaluation arrives — and gets the results table
(median and range over seeds) at the end. Displayed, the panel also leaves its figure as
``image/png`` (:class:`~sfn_teach.widget_parts.PanelBox`), for viewers without a kernel.

The panel edits a copy of a benchmark config (the schema of :mod:`sfn_teach.bench.config`) and
hands it to :func:`sfn_teach.bench.run_benchmark`. Each distinct configuration runs in its own
folder, named by a hash of the config, below ``out_dir``: pressing Run again with the same
settings continues an interrupted run where its last checkpoint left it (or just reports a
finished one), while new settings start afresh. A bad setting (``K < 2r + 1``, no optimiser
ticked, …) is refused with the validator's message naming the field, before anything runs;
an error during the run is shown in the panel, never raised from the button's callback.

Nothing in the library imports this module; notebooks do.
"""

from __future__ import annotations

import copy
import hashlib
import html
import json
import time
from pathlib import Path

import ipywidgets as widgets
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from .bench import load_benchmark, run_benchmark, validate_config
from .widget_parts import SLIDER, DampingControl, PanelBox, canvas_png, error_html

#: the controls a panel can show, in the order they are laid out
CONTROLS = (
    "optimizers", "num_terms", "acceleration_order", "damping", "batch_size", "epochs",
    "steps", "seeds", "augment",
)

#: what a panel shows unless told otherwise
DEFAULT_CONTROLS = ("optimizers", "num_terms", "acceleration_order", "damping", "batch_size",
                    "epochs", "seeds")

#: the optimiser types whose series settings the K, r and λ controls change
SERIES_TYPES = ("series_sfn",)

#: seconds between two redraws of the live figure (drawing is slower than a digits step)
REDRAW_INTERVAL = 0.5

#: the live figure: (record key, label) per row, against (record key, label) per column
ROWS = (("test_loss", "test loss"), ("test_accuracy", "test accuracy"))
COLUMNS = (("epoch", "epoch"), ("wall_clock", "wall-clock of training steps (s)"))


def config_folder(config: dict, fast: bool) -> str:
    """``<name>-<hash>``: the folder of one configuration (the same settings, the same folder)."""
    text = json.dumps({"config": config, "fast": fast}, sort_keys=True, default=str)
    return f"{config.get('name', 'benchmark')}-{hashlib.sha256(text.encode()).hexdigest()[:10]}"


def markdown_table_to_html(table: str) -> str:
    """The runner's Markdown summary table as an HTML table (escaped)."""
    rows = [line.strip().strip("|").split("|") for line in table.strip().splitlines()]
    rows = [row for row in rows if not set("".join(row)) <= set("-: ")]
    cells = [[html.escape(cell.strip()) for cell in row] for row in rows]
    head = "".join(f"<th>{cell}</th>" for cell in cells[0])
    body = "".join("<tr>" + "".join(f"<td>{c}</td>" for c in row) + "</tr>" for row in cells[1:])
    return f'<table class="sfn-results-table"><tr>{head}</tr>{body}</table>'


class BenchmarkPanel:
    """Configure and run a benchmark from a notebook, with live progress and curves.

    Args:
        config: the starting benchmark config, as a raw dict (e.g. ``tomllib.load`` of a file
            in ``benchmarks/``); the panel never modifies it.
        out_dir: the folder under which each configuration gets its run folder.
        controls: which controls to show, a subset of :data:`CONTROLS`:
            ``optimizers`` (a checkbox per optimiser of the config), ``num_terms`` (``K``),
            ``acceleration_order`` (``r``) and ``damping`` (``λ``, the initial damping) of
            every SeriesSFN optimiser, ``batch_size`` (of every optimiser; 0 keeps each
            optimiser's own, e.g. the paper's 3200 for SGD and 800 for Adam), ``epochs`` or
            ``steps`` (the budget), ``seeds`` (how many: seeds 0, 1, …) and ``augment``.
        augment_path: where in the config the ``augment`` checkbox writes its bool, e.g.
            ``("data", "augment")``.
        fast: run the config's ``[fast]`` budget (what the tests and fast mode use).
        selected: the names of the optimisers whose checkboxes start ticked (default: all);
            the others are offered but not run until ticked.

    Attributes for code and tests: the controls (e.g. ``panel.num_terms``), ``run_button``,
    ``progress`` (an ``IntProgress`` over all steps of all runs), ``status``, ``message``,
    ``image`` (the live figure as PNG; ``figure`` is the Figure), ``table`` (the results as
    HTML), ``records`` (every record so far), ``result`` (the last
    :class:`~sfn_teach.bench.runner.BenchmarkResult`) and ``widget`` (the box to display).
    :meth:`run` is what the button does.
    """

    def __init__(self, config: dict, out_dir, controls=DEFAULT_CONTROLS, augment_path=None,
                 fast: bool = False, selected=None):
        unknown = sorted(set(controls) - set(CONTROLS))
        if unknown:
            raise ValueError(f"controls must be among {CONTROLS}, got unknown {unknown}")
        names = [entry["name"] for entry in config["optimizers"]]
        if selected is not None and not set(selected) <= set(names):
            raise ValueError(f"selected must name optimisers of the config ({names}), got "
                             f"unknown {sorted(set(selected) - set(names))}")
        if "augment" in controls and augment_path is None:
            raise ValueError("the augment control needs augment_path, e.g. ('data', 'augment')")
        self.base_config = copy.deepcopy(config)
        self.out_dir = Path(out_dir)
        self.augment_path = augment_path
        self.fast = fast
        self.records, self.result = [], None
        self._controls = [name for name in CONTROLS if name in controls]
        self._build_controls(names if selected is None else selected)
        self.run_button = widgets.Button(description="Run", button_style="primary",
                                         icon="play")
        self.run_button.on_click(lambda _button: self.run())
        self.progress = widgets.IntProgress(value=0, min=0, max=1, description="progress")
        self.status, self.message, self.table = widgets.HTML(), widgets.HTML(), widgets.HTML()
        self.figure = Figure(figsize=(10, 6), dpi=72, layout="constrained")
        self.axes = self.figure.subplots(len(ROWS), len(COLUMNS), squeeze=False)
        self._canvas = FigureCanvasAgg(self.figure)
        self.image = widgets.Image(format="png")
        # CSS classes by which the browser tests (tests/test_browser.py) find the parts
        for part, name in [(self.run_button, "run"), (self.message, "message"),
                           (self.image, "figure"), (self.table, "results"),
                           (self.num_terms, "k-slider"), (self.damping.text, "damping-text"),
                           (self.status, "status")]:
            part.add_class(f"sfn-{name}")
        self._draw()
        self.widget = PanelBox([
            *self._control_rows(), widgets.HBox([self.run_button, self.progress]),
            self.status, self.message, self.image, self.table,
        ], lambda: bytes(self.image.value))
        self.widget.add_class("sfn-benchmark-panel")

    def _ipython_display_(self):
        from IPython.display import display

        display(self.widget)

    # -- controls -----------------------------------------------------------------------------

    def _series_entry(self):
        """The first SeriesSFN optimiser of the config (the controls start at its values)."""
        entries = [o for o in self.base_config["optimizers"] if o.get("type") in SERIES_TYPES]
        return entries[0] if entries else {}

    def _build_controls(self, selected):
        train, series = self.base_config.get("train", {}), self._series_entry()
        self.optimizers = {
            entry["name"]: widgets.Checkbox(value=entry["name"] in selected,
                                            description=entry["name"], indent=False)
            for entry in self.base_config["optimizers"]
        }
        self.num_terms = widgets.IntSlider(value=series.get("num_terms", 5), min=1, max=30,
                                           description="K", **SLIDER)
        self.acceleration_order = widgets.IntSlider(
            value=series.get("acceleration_order", 0), min=0, max=5, description="r", **SLIDER
        )
        self.damping = DampingControl(series.get("damping", 1e-4))
        self.batch_size = widgets.IntText(value=train.get("batch_size", 0),
                                          description="batch size (0: as configured)", **SLIDER)
        self.epochs = widgets.IntSlider(value=train.get("epochs") or 1, min=1, max=100,
                                        description="epochs", **SLIDER)
        self.steps = widgets.IntSlider(value=train.get("steps") or 20, min=1, max=500,
                                       description="steps", **SLIDER)
        self.seeds = widgets.IntSlider(value=len(train.get("seeds", [0])), min=1, max=10,
                                       description="seeds", **SLIDER)
        self.augment = widgets.Checkbox(value=bool(self._get(self.augment_path)),
                                        description="augmentation (crop + flip)", indent=False)

    def _get(self, path):
        value = self.base_config
        for key in path or ():
            value = value.get(key, {}) if isinstance(value, dict) else {}
        return value if path else False

    def _control_rows(self):
        shown = set(self._controls)
        rows = []
        if "optimizers" in shown:
            rows.append(widgets.HBox(list(self.optimizers.values())))
        series = [getattr(self, n) for n in ("num_terms", "acceleration_order") if n in shown]
        if series:
            rows.append(widgets.HBox(series))
        if "damping" in shown:
            rows.append(self.damping.box)
        budget = [getattr(self, n) for n in ("batch_size", "epochs", "steps", "seeds", "augment")
                  if n in shown]
        if budget:
            rows.append(widgets.HBox(budget))
        return rows

    def build_config(self) -> dict:
        """The config the controls describe: a modified deep copy of ``config``."""
        config = copy.deepcopy(self.base_config)
        shown, train = set(self._controls), config.setdefault("train", {})
        if "optimizers" in shown:
            config["optimizers"] = [o for o in config["optimizers"]
                                    if self.optimizers[o["name"]].value]
        for entry in config["optimizers"]:
            if entry.get("type") in SERIES_TYPES:
                for name in ("num_terms", "acceleration_order"):
                    if name in shown:
                        entry[name] = getattr(self, name).value
                if "damping" in shown:
                    entry["damping"] = self.damping.value
            if "batch_size" in shown and self.batch_size.value:
                entry["batch_size"] = self.batch_size.value
        if "batch_size" in shown and self.batch_size.value:
            train["batch_size"] = self.batch_size.value
        for budget, other in (("epochs", "steps"), ("steps", "epochs")):
            if budget in shown:
                train[budget] = getattr(self, budget).value
                train.pop(other, None)
        if "seeds" in shown:
            train["seeds"] = list(range(self.seeds.value))
        if "augment" in shown:
            *parents, last = self.augment_path
            target = config
            for key in parents:
                target = target.setdefault(key, {})
            target[last] = self.augment.value
        return config

    # -- running ------------------------------------------------------------------------------

    def run(self):
        """Validate the settings, run (or resume) the benchmark, then show the results table."""
        self.message.value = self.table.value = ""
        raw = self.build_config()
        try:
            if not raw["optimizers"]:
                raise ValueError("tick at least one optimiser")
            config = validate_config(raw, raw.get("name", "benchmark"))
        except ValueError as error:  # ConfigError is a ValueError naming the field
            self.message.value = error_html(str(error))
            return None
        if self.fast:
            config = config.fast_version()
        run_dir = self.out_dir / config_folder(raw, self.fast)
        resume = (run_dir / "config.json").exists()
        self.records = load_benchmark(run_dir)[1] if resume else []
        self.progress.max = max(1, sum(config.num_steps(spec) for spec, _ in config.runs()))
        self._update_progress()
        self.status.value = ("continuing the run in " if resume else "running in ") + str(run_dir)
        self.run_button.disabled, self._last_draw = True, 0.0
        try:
            self.result = run_benchmark(raw, run_dir, fast=self.fast, resume=resume,
                                        progress=False, on_record=self._on_record)
        except Exception as error:  # noqa: BLE001 - a button's callback must never raise
            self.message.value = error_html(f"{type(error).__name__}: {error}")
            return None
        finally:
            self.run_button.disabled = False
        self.records = self.result.records
        self.progress.value = self.progress.max
        self._draw()
        self.table.value = markdown_table_to_html(self.result.table)
        self.status.value = f"done: {len(self.records)} records in {run_dir}"
        return self.result

    def _on_record(self, record):
        self.records.append(record)
        self._update_progress(record)
        if time.perf_counter() - self._last_draw >= REDRAW_INTERVAL:
            self._draw()
            self._last_draw = time.perf_counter()

    def _update_progress(self, record=None):
        """The steps done, summed over runs (each run's newest record counts its steps)."""
        latest = {}
        for r in self.records:
            latest[(r["optimizer"], r["seed"])] = max(r["step"], latest.get(
                (r["optimizer"], r["seed"]), 0))
        self.progress.value = min(sum(latest.values()), self.progress.max)
        if record is not None:
            self.status.value = (
                f"{html.escape(record['optimizer'])}, seed {record['seed']}: step "
                f"{record['step']}, test loss {record['test_loss']:.4g}, test accuracy "
                f"{record['test_accuracy']:.3f}"
            )

    def _draw(self):
        """Redraw the live figure: one line per run, one colour per optimiser."""
        names = list(dict.fromkeys(r["optimizer"] for r in self.records))
        runs = list(dict.fromkeys((r["optimizer"], r["seed"]) for r in self.records))
        for (y, y_label), row in zip(ROWS, self.axes):
            for (x, x_label), ax in zip(COLUMNS, row):
                ax.clear()
                labelled = set()
                for name, seed in runs:
                    points = sorted((r[x], r[y]) for r in self.records
                                    if (r["optimizer"], r["seed"]) == (name, seed)
                                    and r[y] is not None)
                    if points:
                        xs, ys = zip(*points)
                        ax.plot(xs, ys, ".-", color=f"C{names.index(name)}", alpha=0.8,
                                label=None if name in labelled else name)
                        labelled.add(name)
                ax.set(xlabel=x_label, ylabel=y_label)
                if y.endswith("loss") and ax.lines:
                    ax.set_yscale("log")
                ax.grid(alpha=0.3)
        if names:
            self.axes[0][0].legend(fontsize="small")
        self.figure.suptitle("live: one line per run (optimiser × seed)")
        self._canvas.draw()
        self.image.value = canvas_png(self._canvas)
