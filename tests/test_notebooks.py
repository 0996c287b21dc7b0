"""The notebooks: paired with their .ipynb, following the course conventions, and executing
headless in fast mode (SFN_TEACH_FAST=1) without errors."""

import re
import time
from pathlib import Path

import jupytext
import nbformat
import pytest
from nbclient import NotebookClient

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOK_DIR = ROOT / "notebooks"
SOURCES = sorted(NOTEBOOK_DIR.glob("[0-9][0-9]_*.py"))
#: where nbclient stores the state of the notebook's widgets in its metadata
WIDGET_STATE = "application/vnd.jupyter.widget-state+json"


def test_there_are_notebooks():
    assert len(SOURCES) >= 3


def cell_sources(notebook):
    return [(cell.cell_type, cell.source.strip()) for cell in notebook.cells]


@pytest.mark.parametrize("source", SOURCES, ids=lambda p: p.stem)
def test_py_and_ipynb_are_in_sync(source):
    paired = source.with_suffix(".ipynb")
    assert paired.exists(), f"{paired.name} is missing: run `jupytext --sync {source}`"
    from_py = jupytext.read(source)
    from_ipynb = jupytext.read(paired)
    assert cell_sources(from_py) == cell_sources(from_ipynb), (
        f"{source.name} and {paired.name} differ: run `jupytext --sync notebooks/*.py`"
    )
    assert from_ipynb.metadata["kernelspec"]["name"] == "python3"


@pytest.mark.parametrize("source", SOURCES, ids=lambda p: p.stem)
def test_notebook_follows_the_course_conventions(source):
    notebook = jupytext.read(source)
    markdown = "\n".join(c.source for c in notebook.cells if c.cell_type == "markdown")
    code = "\n".join(c.source for c in notebook.cells if c.cell_type == "code")
    assert re.search(r"learning objectives", markdown, re.I)
    assert re.search(r"^#+ .*summary", markdown, re.I | re.M)
    tagged = [c for c in notebook.cells if "parameters" in c.metadata.get("tags", [])]
    assert len(tagged) == 1 and "SFN_TEACH_FAST" in tagged[0].source
    assert len(re.findall(r"\bcheck_\w+\(", code)) >= 3, "at least three checked exercises"
    assert "sfn_teach" in code


def execute(source):
    """Run the notebook in a fresh python3 kernel (it inherits SFN_TEACH_FAST from os.environ)."""
    notebook = jupytext.read(source)
    client = NotebookClient(
        notebook, kernel_name="python3", timeout=600,
        resources={"metadata": {"path": str(NOTEBOOK_DIR)}},
    )
    start = time.perf_counter()
    client.execute()
    return notebook, time.perf_counter() - start


def outputs_of_type(notebook, mime):
    return [
        output
        for cell in notebook.cells
        if cell.cell_type == "code"
        for output in cell.get("outputs", [])
        if mime in output.get("data", {})
    ]


def outputs_captured_by_output_widgets(notebook):
    """The outputs that went into an ``ipywidgets.Output`` while the executed notebook ran.

    nbclient stands in for each Output widget and sends every output it captures back to the
    kernel, on the shell socket on which it is waiting for the cell's reply; now and then the
    reply then goes unnoticed until the cell's timeout (jupyter/nbclient#312: notebook 01 hung
    for 600 s that way). The notebooks show figures in an ``ipywidgets.Image`` instead.
    """
    state = notebook.metadata.get("widgets", {}).get(WIDGET_STATE, {}).get("state", {})
    return [output for model in state.values() if model["model_name"] == "OutputModel"
            for output in model["state"].get("outputs", [])]


@pytest.mark.parametrize("source", SOURCES, ids=lambda p: p.stem)
def test_notebook_executes_in_fast_mode(source, monkeypatch):
    monkeypatch.setenv("SFN_TEACH_FAST", "1")
    notebook, seconds = execute(source)
    errors = [
        output
        for cell in notebook.cells
        for output in cell.get("outputs", [])
        if output.get("output_type") == "error"
    ]
    assert not errors
    assert len(outputs_of_type(notebook, "image/png")) >= 3, "at least three figures"
    assert outputs_of_type(notebook, "application/vnd.jupyter.widget-view+json"), "a widget"
    assert not outputs_captured_by_output_widgets(notebook), (
        "a cell filled an ipywidgets.Output while it ran, which can stall nbclient until the "
        "cell's timeout: show the figure in an ipywidgets.Image"
    )
    print(f"{source.stem}: fast mode executed in {seconds:.1f} s")  # (measured, not asserted)
    nbformat.validate(notebook)


def test_the_rendered_notebook_02_shows_each_panel_as_an_image(monkeypatch):
    """As scripts/render.sh renders it: executed, no widget state, exported to HTML."""
    from nbconvert import HTMLExporter
    from nbconvert.preprocessors import ExecutePreprocessor

    monkeypatch.setenv("SFN_TEACH_FAST", "1")
    notebook = jupytext.read(NOTEBOOK_DIR / "02_saddles_in_2d.py")
    ExecutePreprocessor(timeout=600, store_widget_state=False).preprocess(
        notebook, {"metadata": {"path": str(NOTEBOOK_DIR)}})
    panels = outputs_of_type(notebook, "application/vnd.jupyter.widget-view+json")
    assert panels and all("image/png" in panel["data"] for panel in panels)
    html, _ = HTMLExporter().from_notebook_node(notebook)
    for panel in panels:
        png = re.escape(panel["data"]["image/png"].strip())
        assert re.search(rf'<img [^>]*src="data:image/png;base64,{png}"', html)
