"""CIFAR-10 as a benchmark task, and the GPU path of the training step, tested on the CPU.

The smoke config (a generated archive in the CIFAR-10 binary format, ResNet-18 of width 4) runs
end to end: train, evaluate, checkpoint, an interruption, resume, report, and the CLI. BatchNorm
running statistics move once per step for every optimiser. The precision policy, compilation
with its fallback and the warm-up accounting run here on the CPU; what only a GPU can show
(CUDA events, TF32 arithmetic, cuDNN autotuning) is guarded so that the same code runs here.
"""

import copy
import dataclasses
import json
import warnings
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from bench_configs import without_timing
from torch import nn

import sfn_teach.data as data_module
import sfn_teach.train as train_module
from sfn_teach.bench import ConfigError, load_benchmark, load_config, run_benchmark
from sfn_teach.bench.__main__ import main
from sfn_teach.bench.config import (
    build_model,
    channels_last_ignored,
    model_memory_format,
    read_config,
    validate_config,
)
from sfn_teach.bench.overrides import apply_overrides
from sfn_teach.bench.report import format_excluded_time, summarise
from sfn_teach.bench.runner import load_dataset, run_one
from sfn_teach.checkpoint import load_checkpoint
from sfn_teach.cifar10 import CACHE_NAME
from sfn_teach.cifar10_generated import synthetic_cifar10
from sfn_teach.data import DATASETS, load_digits
from sfn_teach.device import Precision, memory_format, resolve_device, timed
from sfn_teach.models import MLP
from sfn_teach.train import OPTIMIZERS, TIMING_FIELDS, Trainer, make_closure, seed_everything

ROOT = Path(__file__).resolve().parent.parent

SMOKE = ROOT / "benchmarks" / "cifar10_smoke.toml"


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    """One CIFAR-10 folder for the module: the generated archive is parsed once, then cached."""
    return tmp_path_factory.mktemp("cifar10")


def smoke(data_dir, **overrides):
    return load_config(SMOKE, {"data.dir": str(data_dir), **overrides})


# --------------------------------------------------------------------------------------------
# The smoke config end to end
# --------------------------------------------------------------------------------------------


def test_smoke_config_trains_evaluates_checkpoints_resumes_and_reports(tmp_path, data_dir):
    config = smoke(data_dir)
    assert config.sizes == {"train": 270, "val": 30, "test": 100}
    out, seen = tmp_path / "run", []

    def interrupt_at_the_sixth_record(record):  # in the middle of the second run
        seen.append(record)
        if len(seen) == 6:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        run_benchmark(config, out, progress=False, on_record=interrupt_at_the_sixth_record)
    assert (data_dir / "generated-300-100" / CACHE_NAME).exists()  # through the real parser
    assert len(load_benchmark(out)[1]) == 6
    result = run_benchmark(config, out, resume=True, progress=False)

    records = result.records
    assert [r["step"] for r in records] == [0, 1, 2, 3] * len(config.optimizers)
    assert records[:6] == seen
    assert [r["optimizer"] for r in records[::4]] == [spec.name for spec in config.optimizers]
    for record in records:
        assert 0 <= record["test_accuracy"] <= 1 and record["val_loss"] > 0
        assert record["compiled"] is False and record["warmup_seconds"] == 0
    assert records[3]["hvps"] == 3 * 2 * (5 - 1) and records[3]["forward"] == 3  # K = 5, LM
    summary = (out / "summary.md").read_text()
    assert "final test accuracy" in summary and "| SeriesSFN adaptive | 1 | 3 |" in summary
    assert load_checkpoint(out / "adam-seed0" / "checkpoint.pt")["step"] == 3

    # the interrupted run, run again without interruption: the same records
    spec = config.optimizers[1]
    again = run_one(config, spec, 0, load_dataset(config), tmp_path / "again", progress=False)
    assert without_timing(again) == without_timing(records[4:8])


def test_cli_flags_set_the_data_folder_and_resume_ignores_where_the_data_is(tmp_path, data_dir,
                                                                            capsys):
    out = tmp_path / "run"
    command = ["run", str(SMOKE), "--fast", "--quiet", "--out", str(out), "--device", "cpu",
               "--data-dir", str(data_dir), "--set", "train.seeds=[5]"]
    assert main(command) == 0
    stored = json.loads((out / "config.json").read_text())["config"]
    assert stored["data"]["dir"] == str(data_dir) and stored["device"] == "cpu"
    assert (out / "summary.md").exists()

    moved = tmp_path / "elsewhere"  # resuming with the data in another folder is allowed ...
    assert main([*command[:-4], "--data-dir", str(moved), "--set", "train.seeds=[5]",
                 "--resume"]) == 0
    assert (moved / "generated-300-100" / CACHE_NAME).exists()
    # ... a change of what is computed is not, and the error names the field
    assert main([*command, "--resume", "--set", "optimizers[2].lr=0.1"]) == 2
    error = capsys.readouterr().err
    assert "optimizers[2].lr" in error and "different config" in error
    # a URL makes no sense for a generated archive
    assert main([*command, "--cifar10-url", "http://127.0.0.1:9/x.tar.gz"]) == 2
    assert "config field 'data.url'" in capsys.readouterr().err


def test_the_real_cifar10_task_passes_folder_url_and_download_on(monkeypatch, tmp_path):
    asked = []
    small = synthetic_cifar10(50, 10)

    def fake_load_cifar10(data_dir=None, download=True, url=None, progress=True):
        asked.append((data_dir, download, url))
        return small

    monkeypatch.setattr(data_module, "load_cifar10", fake_load_cifar10)
    info = DATASETS["cifar10"]
    options = {**info.options, "dir": str(tmp_path), "url": "file:///mirror.tar.gz"}
    dataset = info.load(torch.float32, "cpu", False, **options)
    assert asked == [(str(tmp_path), True, "file:///mirror.tar.gz")]
    assert len(dataset.train) == 45 and len(dataset.val) == 5 and dataset.augment is None
    info.load(torch.float32, "cpu", False, **{**info.options, "download": False})
    assert asked[-1] == (None, False, None)  # "" means: cifar10.py's defaults and variables


def test_synthetic_task_is_made_in_memory():
    info = DATASETS["cifar10_synthetic"]
    options = {**info.options, "num_train": 100, "num_test": 20, "augment": True}
    assert info.sizes(**options) == {"train": 90, "val": 10, "test": 20}
    dataset = info.load(torch.float32, "cpu", False, **options)
    assert dataset.train.inputs.dtype == torch.uint8 and dataset.augment is not None
    x, y = dataset.test.prepare(dataset.test.inputs[:4]), dataset.test.targets[:4]
    assert x.shape == (4, 3, 32, 32) and x.dtype == torch.float32 and y.dtype == torch.int64


# --------------------------------------------------------------------------------------------
# Config validation
# --------------------------------------------------------------------------------------------

BAD_CIFAR_CONFIGS = [
    # (what is wrong, {field path: value}, the field the error must name)
    ("unknown task option", {"data.colour": True}, "data.colour"),
    ("option of the wrong type", {"data.augment": "yes"}, "data.augment"),
    ("width <= 0", {"model.width": 0}, "model.width"),
    ("channels_last not a flag", {"model.channels_last": 1}, "model.channels_last"),
    ("ResNet-18 on a task without images", {"task": "digits", "data": {}}, "model.type"),
    ("real archive with other sizes", {"data.generated": False}, "data.num_train"),
    ("generated training images not a multiple of 5", {"data.num_train": 402}, "data.num_train"),
    ("no validation images", {"data.validation_fraction": 0.001}, "data.validation_fraction"),
    ("validation fraction 1", {"data.validation_fraction": 1}, "data.validation_fraction"),
    ("URL for a generated archive", {"data.url": "http://x/y.tar.gz"}, "data.url"),
    ("bf16 HVPs without bf16 autocast", {"precision.hvp": "bf16"}, "precision.hvp"),
    ("fp16 autocast", {"precision.autocast": "fp16"}, "precision.autocast"),
    ("TF32 flag not a flag", {"precision.tf32": 1}, "precision.tf32"),
    ("unknown precision field", {"precision.amp": True}, "precision.amp"),
    ("compile not a flag", {"compile": "yes"}, "compile"),
    ("negative warm-up", {"train.warmup_steps": -1}, "train.warmup_steps"),
    ("unknown device", {"device": "tpu"}, "device"),
    ("batch larger than the training part", {"train.batch_size": 271}, "train.batch_size"),
    ("evaluation chunk 0", {"train.eval_batch_size": 0}, "train.eval_batch_size"),
    ("override of a missing list entry", {"optimizers[9].lr": 0.1}, "optimizers[9].lr"),
    ("not a field path", {"data..dir": "x"}, "data..dir"),
]


@pytest.mark.parametrize("what, overrides, field", BAD_CIFAR_CONFIGS,
                         ids=[case[0] for case in BAD_CIFAR_CONFIGS])
def test_bad_cifar_config_names_the_field(what, overrides, field):
    with pytest.raises(ConfigError) as error:
        validate_config(apply_overrides(read_config(SMOKE), overrides))
    assert error.value.field == field
    assert f"config field '{field}'" in str(error.value)


def test_paper_and_quick_configs_hold_the_published_settings():
    paper = load_config(ROOT / "benchmarks" / "cifar10_resnet18_paper.toml")
    quick = load_config(ROOT / "benchmarks" / "cifar10_resnet18_quick.toml")
    assert paper.epochs == 72 and not paper.data["augment"] and quick.data["augment"]
    assert paper.model == {"type": "resnet18", "width": 64, "channels_last": True}
    assert paper.sizes == {"train": 45_000, "val": 5_000, "test": 10_000}
    settings = {spec.name: (spec.type, spec.batch_size, spec.hyperparameters)
                for spec in paper.optimizers}
    assert settings == {spec.name: (spec.type, spec.batch_size, spec.hyperparameters)
                        for spec in quick.optimizers}
    adaptive, default_rule, unadaptive, sgd, adam, *others = (settings[name][2]
                                                              for name in settings)
    assert [settings[name][1] for name in settings] == [3200, 3200, 3200, 3200, 800,
                                                        256, 256, 3200, 512]
    assert list(settings)[:3] == ["SeriesSFN adaptive, paper's V rule", "SeriesSFN adaptive",
                                  "SeriesSFN damped unadaptive, paper's V rule"]
    assert adaptive == dict(num_terms=5, acceleration_order=2, damping=1.0366e-4, adaptive=True,
                            damping_factor=0.9, scale_rule="lower_bound", scale=100.0,
                            damping_min=1e-8)
    assert default_rule == dict(num_terms=5, acceleration_order=2, damping=1.0366e-4,
                                adaptive=True, damping_factor=0.9, damping_min=1e-8)
    assert unadaptive == dict(num_terms=2, acceleration_order=0, damping=2.4447e-3, lr=0.56201,
                              momentum=0.11519, scale_rule="lower_bound", scale=100.0,
                              damping_min=1e-8)
    assert sgd == dict(lr=4.1140e-3)
    assert adam == dict(lr=7.7037e-5, eps=3.6138e-4, betas=(0.99734, 0.99990))
    # the optimisers a user would pick instead, as their authors' or libraries' CIFAR-10 runs
    assert others == [dict(lr=0.15, betas=(0.9, 0.999), weight_decay=5e-4, eps=1e-4,
                           hessian_power=1.0),  # AdaHessian's reference code
                      dict(lr=0.06, p=0.01, update_period=10),  # pytorch-optimizer's SophiaH
                      dict(lr=1.0, max_iter=5, line_search_fn="strong_wolfe"),  # torch docs
                      dict(lr=0.3, momentum=0.9, weight_decay=5e-4, damping=1e-3,
                           curvature_interval=10, max_grad_norm=1.0)]  # ASDL's ResNet-18
    assert paper.num_steps(paper.optimizers[0]) == 72 * (45_000 // 3200)


# --------------------------------------------------------------------------------------------
# BatchNorm: running statistics move once per step, for every optimiser
# --------------------------------------------------------------------------------------------


def conv_net():
    """Conv 1→3 (3×3), BatchNorm, ReLU, linear 3·16 → 3: 180 parameters (dense Hessians too)."""
    return nn.Sequential(nn.Conv2d(1, 3, 3, padding=1), nn.BatchNorm2d(3), nn.ReLU(),
                         nn.Flatten(), nn.Linear(48, 3)).double()


CURVATURE = dict(damping=1e-2, damping_factor=0.9)
ONCE_PER_STEP = {
    "sgd": ("sgd", dict(lr=0.1, momentum=0.9)),
    "adam": ("adam", dict(lr=1e-2)),
    "series_sfn adaptive (LM re-evaluation)": (
        "series_sfn", dict(num_terms=5, acceleration_order=2, adaptive=True, **CURVATURE)),
    "series_sfn forward-over-reverse (re-runs the closure)": (
        "series_sfn", dict(num_terms=3, hvp_backend="forward-over-reverse", **CURVATURE)),
    "series_sfn unadaptive, fixed damping": ("series_sfn", dict(num_terms=2, lr=0.5)),
    "exact_sfn": ("exact_sfn", CURVATURE),
    "newton": ("newton", CURVATURE),
}


@pytest.mark.parametrize("case", ONCE_PER_STEP)
def test_running_statistics_are_updated_exactly_once_per_step(case):
    kind, settings = ONCE_PER_STEP[case]
    torch.manual_seed(0)
    model = conv_net().train()
    optimizer = OPTIMIZERS[kind](model.parameters(), **settings)
    batchnorm = model[1]
    generator = torch.Generator().manual_seed(1)
    for step in range(1, 3):
        x = torch.randn(16, 1, 4, 4, generator=generator, dtype=torch.float64)
        y = torch.randint(0, 3, (16,), generator=generator)
        expected = copy.deepcopy(model)
        expected(x)  # one training forward pass at θ_t: what the step must do to the statistics
        optimizer.step(make_closure(optimizer, model, F.cross_entropy, x, y))
        assert int(batchnorm.num_batches_tracked) == step
        torch.testing.assert_close(batchnorm.running_mean, expected[1].running_mean,
                                   rtol=0, atol=1e-15)
        torch.testing.assert_close(batchnorm.running_var, expected[1].running_var,
                                   rtol=0, atol=1e-15)
        assert not torch.equal(expected[0].weight, model[0].weight)  # the step did move θ


# --------------------------------------------------------------------------------------------
# Precision, compilation, warm-up (on the CPU; the same code runs on a GPU)
# --------------------------------------------------------------------------------------------


class Spy(nn.Module):
    """Wraps a model and notes, for every forward pass, the autocast and TF32 state."""

    def __init__(self, model):
        super().__init__()
        self.model, self.seen = model, []

    def forward(self, x):
        self.seen.append((torch.is_autocast_enabled("cpu") and torch.get_autocast_dtype("cpu"),
                          torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32))
        return self.model(x)


@pytest.fixture(scope="module")
def digits():
    return load_digits()


def spy_trainer(digits, kind, precision, **settings):
    seed_everything(0)
    model = Spy(MLP((64, 6, 10)))
    optimizer = OPTIMIZERS[kind](model.parameters(), **settings)
    return Trainer(model, optimizer, digits, 100, 0, precision=precision)


@pytest.mark.parametrize("hvp", ["fp32", "bf16"])
def test_precision_policy_per_kind_of_step_and_fp32_evaluation(digits, hvp):
    precision = Precision(autocast="bf16", hvp=hvp, tf32=True, hvp_tf32=False)
    sgd = spy_trainer(digits, "sgd", precision, lr=0.1)
    sgd.train_step()
    assert sgd.model.seen == [(torch.bfloat16, True, True)]
    sfn = spy_trainer(digits, "series_sfn", precision, num_terms=3, adaptive=True,
                      damping_factor=0.9)
    stats = sfn.train_step()
    expected = (torch.bfloat16 if hvp == "bf16" else False, False, False)
    assert sfn.model.seen == [expected, expected]  # gradient/HVP pass and the re-evaluation
    assert all(torch.isfinite(torch.tensor(stats[key])) for key in ("loss", "rho"))
    sfn.model.seen.clear()
    sfn.record()  # evaluation: no autocast, no TF32, whatever the policy
    assert set(sfn.model.seen) == {(False, False, False)}
    flags = (torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32)
    assert flags == (True, False)  # PyTorch's defaults, restored after every block
    assert "curvature steps (gradient, HVPs, re-evaluation): " + (
        "bf16 autocast" if hvp == "bf16" else "fp32") in precision.describe(torch.device("cpu"))


def test_bf16_hvps_need_bf16_autocast_and_devices_resolve():
    with pytest.raises(ValueError, match="autocast = 'bf16'"):
        Precision(hvp="bf16")
    assert resolve_device("auto") == torch.device("cuda" if torch.cuda.is_available() else "cpu")
    with pytest.raises(ValueError, match="device"):
        resolve_device("tpu")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="no CUDA device"):
            resolve_device("cuda")
    value, seconds = timed(lambda: 7, torch.device("cpu"))
    assert value == 7 and seconds >= 0


def compiled_and_eager(digits, kind, **settings):
    runs = []
    for compile_model in (True, False):
        seed_everything(0)
        model = MLP((64, 6, 10))
        trainer = Trainer(model, OPTIMIZERS[kind](model.parameters(), **settings), digits, 200,
                          0, compile=compile_model)
        runs.append((trainer, trainer.run(3, 3, progress=False)))
    return runs


def test_compile_falls_back_to_eager_for_double_backward_and_continues_exactly(digits):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        (compiled, records), (eager, eager_records) = compiled_and_eager(
            digits, "series_sfn", num_terms=3, adaptive=True, damping_factor=0.9)
    assert any("torch.compile failed at the first step" in str(w.message) for w in caught)
    assert records[-1]["compiled"] is False and "double backward" in records[-1]["compile_error"]
    assert records[-1]["compile_seconds"] > 0 and eager_records[-1]["compile_seconds"] == 0
    # the failed attempt left no trace: the same steps as a run that never tried to compile
    skip = ("compiled", "compile_error", *TIMING_FIELDS)
    assert [{k: v for k, v in r.items() if k not in skip} for r in records] == [
        {k: v for k, v in r.items() if k not in skip} for r in eager_records]
    for p, q in zip(compiled.model.parameters(), eager.model.parameters()):
        assert torch.equal(p, q)


def test_compile_runs_first_order_steps_compiled(digits):
    (compiled, records), (_, eager_records) = compiled_and_eager(digits, "sgd", lr=0.1)
    assert records[-1]["compiled"] is True and records[-1]["compile_error"] is None
    assert records[-1]["train_loss"] == pytest.approx(eager_records[-1]["train_loss"], rel=1e-5)


def test_warmup_and_compile_time_are_kept_out_of_the_wall_clock(digits, monkeypatch):
    monkeypatch.setattr(train_module, "timed", lambda fn, device: (fn(), 1.0))
    seed_everything(0)
    model = MLP((64, 6, 10))
    trainer = Trainer(model, OPTIMIZERS["sgd"](model.parameters(), lr=0.1), digits, 100, 0,
                      warmup_steps=2)
    record = trainer.run(5, 5, progress=False)[-1]
    assert (record["warmup_seconds"], record["wall_clock"], record["compile_seconds"]) == (
        2.0, 3.0, 0.0)
    state = trainer.state_dict()  # a restored trainer (a new process) warms up again
    again = Trainer(model, OPTIMIZERS["sgd"](model.parameters(), lr=0.1), digits, 100, 0,
                    warmup_steps=2)
    again.load_state_dict(state)
    record = again.run(8, 8, progress=False)[-1]
    assert (record["warmup_seconds"], record["wall_clock"]) == (4.0, 4.0)
    with pytest.raises(ValueError, match="warmup_steps"):
        Trainer(model, OPTIMIZERS["sgd"](model.parameters(), lr=0.1), digits, 100, 0,
                warmup_steps=-1)


def test_channels_last_is_for_cuda_only_and_a_cpu_run_says_it_ignores_it(data_dir, tmp_path):
    assert memory_format(torch.device("cuda"), True) == torch.channels_last
    assert memory_format(torch.device("cuda:1"), False) == torch.contiguous_format
    assert memory_format(torch.device("cpu"), True) == torch.contiguous_format
    config = smoke(data_dir, **{"model.width": 2, "model.channels_last": True})
    model = build_model(config)
    assert all(p.is_contiguous() for p in model.parameters())
    assert not model[0][0].weight.is_contiguous(memory_format=torch.channels_last)
    assert "channels_last is ignored on cpu" in channels_last_ignored(config)
    assert channels_last_ignored(smoke(data_dir)) is None  # the shipped smoke config: false
    lines = []
    run_benchmark(apply_overrides(config.raw, {"train.steps": 1, "train.evals": 1,
                                               "optimizers": config.raw["optimizers"][2:3]}),
                  tmp_path / "run", log=lines.append, progress=True)
    assert sum("channels_last is ignored" in line for line in lines) == 1


def test_lbfgs_and_kfac_get_a_contiguous_model_even_on_cuda(data_dir):
    """torch.optim.LBFGS and ASDL's K-FAC flatten gradients with view(-1), which the gradient
    of a channels-last convolution weight refuses (found running the smoke config on a GPU);
    their registry entries say needs_contiguous and the model stays contiguous for them."""
    config = dataclasses.replace(smoke(data_dir, **{"model.channels_last": True}),
                                 device=torch.device("cuda"))  # nothing is allocated there
    layouts = {spec.type: model_memory_format(config, spec) for spec in config.optimizers}
    assert layouts["lbfgs"] == layouts["kfac"] == torch.contiguous_format
    assert layouts["adam"] == layouts["series_sfn"] == layouts["adahessian"] == torch.channels_last
    note = channels_last_ignored(config)
    assert "not used for L-BFGS, K-FAC" in note and "view(-1)" in note

    torch.manual_seed(0)
    x, y = torch.randn(4, 3, 8, 8), torch.randint(0, 2, (4,))
    for key in ("lbfgs", "kfac"):
        for layout, fails in ((torch.channels_last, True), (torch.contiguous_format, False)):
            model = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3), torch.nn.Flatten(),
                                        torch.nn.Linear(288, 2)).to(memory_format=layout)
            entry = OPTIMIZERS[key]
            optimizer = (entry(model, data_size=4) if entry.needs_model
                         else entry(model.parameters()))
            closure = make_closure(optimizer, model, F.cross_entropy, x, y)
            if fails:
                with pytest.raises(RuntimeError, match="view size is not compatible"):
                    optimizer.step(closure)
            else:
                optimizer.step(closure)


def test_summary_states_the_time_kept_out_of_the_training_time():
    def final(optimizer, seed, warmup, compiled, error=None):
        return {"optimizer": optimizer, "seed": seed, "step": 3, "epoch": 1.0, "wall_clock": 2.0,
                "grad_equivalents": 3.0, "example_grad_equivalents": 300.0, "test_loss": 1.0,
                "test_accuracy": 0.5,
                "val_loss": 1.0, "warmup_seconds": warmup, "compile_seconds": 4.0 * compiled,
                "compiled": compiled and error is None, "compile_error": error}

    records = [final("SGD", 0, 0.5, True), final("SGD", 1, 0.7, True),
               final("SFN", 0, 1.0, True, "RuntimeError: no double backward")]
    rows = summarise(records, target_loss=0.5)
    assert rows[0]["warmup_seconds"] == {"median": 0.6, "min": 0.5, "max": 0.7}
    table = format_excluded_time(rows)
    assert "| SGD | 0.6 [0.5–0.7] | 4 | 2/2 | – |" in table
    assert "| SFN | 1 | 4 | 0/1 | RuntimeError: no double backward |" in table
    plain = [dict(r, warmup_seconds=0.0, compile_seconds=0.0) for r in records]
    assert format_excluded_time(summarise(plain, target_loss=0.5)) == ""
