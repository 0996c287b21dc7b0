"""The benchmark panel: controls reach the config, Run trains live, results and resume."""

import matplotlib
import pytest

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib

from pathlib import Path

from sfn_teach.benchmark_panel import BenchmarkPanel, config_folder, markdown_table_to_html

matplotlib.use("Agg")
ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def quick_config():
    config = tomllib.loads((ROOT / "benchmarks" / "digits_quick.toml").read_text())
    config["train"].update(epochs=1, evals=2, seeds=[0])
    return config


def test_controls_reach_the_config(quick_config, tmp_path):
    panel = BenchmarkPanel(quick_config, tmp_path)
    panel.optimizers["Adam"].value = False
    panel.num_terms.value, panel.acceleration_order.value = 7, 2
    panel.damping.text.value = 0.25
    panel.seeds.value = 2
    panel.epochs.value = 3
    config = panel.build_config()
    names = [o["name"] for o in config["optimizers"]]
    assert "Adam" not in names and len(names) == len(quick_config["optimizers"]) - 1
    series = [o for o in config["optimizers"] if o["type"] == "series_sfn"]
    assert series and all(
        (o["num_terms"], o["acceleration_order"], o["damping"]) == (7, 2, 0.25) for o in series
    )
    assert config["train"]["seeds"] == [0, 1] and config["train"]["epochs"] == 3
    assert "steps" not in config["train"]
    assert quick_config["train"]["seeds"] == [0]  # the base config is untouched


def test_run_trains_live_then_shows_the_table_and_resumes(quick_config, tmp_path):
    panel = BenchmarkPanel(quick_config, tmp_path, controls=("optimizers", "num_terms", "damping"))
    panel.optimizers["SGD (momentum)"].value = False
    images = []
    panel.image.observe(lambda change: images.append(change["new"]), names="value")
    panel.run_button.click()
    assert panel.message.value == ""
    assert panel.progress.value == panel.progress.max > 1
    assert {r["optimizer"] for r in panel.records} == {"Adam", "SeriesSFN adaptive"}
    assert "<table" in panel.table.value and "SeriesSFN adaptive" in panel.table.value
    assert images and panel.axes[0][0].lines  # the figure was redrawn with curves
    folders = list(tmp_path.iterdir())
    assert len(folders) == 1 and folders[0].name == config_folder(panel.build_config(), False)

    records = list(panel.records)
    panel.run()  # the same settings: the finished run is read back, nothing trains again
    assert [r["wall_clock"] for r in panel.records] == [r["wall_clock"] for r in records]
    assert len(list(tmp_path.iterdir())) == 1
    panel.num_terms.value = 4  # new settings: a new run folder
    panel.run()
    assert len(list(tmp_path.iterdir())) == 2


def test_bad_settings_are_refused_with_the_field_named(quick_config, tmp_path):
    panel = BenchmarkPanel(quick_config, tmp_path)
    panel.num_terms.value, panel.acceleration_order.value = 2, 1
    assert panel.run() is None
    assert "num_terms" in panel.message.value and not list(tmp_path.iterdir())
    for box in panel.optimizers.values():
        box.value = False
    panel.run()
    assert "at least one optimiser" in panel.message.value
    panel.damping.text.value = -1.0
    for box in panel.optimizers.values():
        box.value = True
    panel.num_terms.value = 5
    panel.run()
    assert "damping" in panel.message.value


def test_bad_construction_is_named(quick_config, tmp_path):
    with pytest.raises(ValueError, match="controls"):
        BenchmarkPanel(quick_config, tmp_path, controls=("learning_rate",))
    with pytest.raises(ValueError, match="augment_path"):
        BenchmarkPanel(quick_config, tmp_path, controls=("augment",))
    with pytest.raises(ValueError, match="selected .*'Shampoo'"):
        BenchmarkPanel(quick_config, tmp_path, selected=("Adam", "Shampoo"))


def test_selected_optimisers_start_ticked_and_the_others_are_offered(quick_config, tmp_path):
    first = quick_config["optimizers"][0]["name"]
    panel = BenchmarkPanel(quick_config, tmp_path, selected=(first,))
    assert list(panel.optimizers) == [o["name"] for o in quick_config["optimizers"]]
    assert [o["name"] for o in panel.build_config()["optimizers"]] == [first]
    panel.optimizers["Adam"].value = True
    assert [o["name"] for o in panel.build_config()["optimizers"]] == [first, "Adam"]


def test_markdown_table_becomes_html():
    table = "| a | b |\n|---|---|\n| 1 | <2> |"
    assert markdown_table_to_html(table) == (
        '<table class="sfn-results-table"><tr><th>a</th><th>b</th></tr>'
        "<tr><td>1</td><td>&lt;2&gt;</td></tr></table>"
    )


def test_batch_size_zero_keeps_each_optimisers_own(quick_config, tmp_path):
    panel = BenchmarkPanel(quick_config, tmp_path)
    panel.batch_size.value = 0
    sizes = {o["name"]: o.get("batch_size") for o in panel.build_config()["optimizers"]}
    assert sizes == {o["name"]: o.get("batch_size") for o in quick_config["optimizers"]}
    panel.batch_size.value = 50
    assert {o["batch_size"] for o in panel.build_config()["optimizers"]} == {50}
