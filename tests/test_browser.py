"""End to end, in a real JupyterLab driven by headless Chromium, the way a teacher uses it.

- The notebooks with explorer panels open from their URL, Run All finishes without an error
  shown, and every panel answers the keyboard (→ on the K slider, a λ typed into its box),
  refuses a negative λ with a message and keeps working; screenshots of the panels after
  that go to ``test-artifacts/browser/``.
- ``notebooks/NAME.py`` and ``NAME.ipynb`` are the same notebook through the server, and saving
  either updates the other on disk (jupytext's contents manager).
- The README's main command, ``bash scripts/lab.sh``, lands in ``notebooks/``, whose file
  browser lists one entry per notebook (its ``.ipynb``), serves each ``.py``/``.ipynb`` pair as
  one notebook, and the first one loads in the browser.
- A missing notebook or a kernel that dies during a run fails with a sentence saying so, and
  every server started here is stopped, with no process of it left behind, even when the test
  process itself is killed (a watchdog, ``tests/process_watchdog.py``, ends them then).

Run them alone with ``python -m pytest -m browser``; they need Debian's Chromium at
``/usr/bin/chromium`` (``apt-get install -y chromium``) and fail, saying so, without it.
"""

from __future__ import annotations

import os
import re
import secrets
import shutil
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import jupytext
import nbformat
import pytest
from browser_support import (
    ARTIFACTS,
    CHROMIUM_ARGS,
    MARKER_VARIABLE,
    NEGATIVE_DAMPING_MESSAGE,
    NOTEBOOK_DIR,
    OPEN_TIMEOUT_S,
    ROOT,
    SERVER_START_TIMEOUT_S,
    WIDGET_TIMEOUT_S,
    OpenNotebook,
    assert_no_errors_shown,
    drag_k_slider,
    explorer_panels,
    figure_digest,
    file_browser,
    file_digest,
    free_port,
    k_slider_value,
    kernel_process,
    lab_options,
    open_notebook,
    panel_state,
    press_arrow_right_on_k_slider,
    processes_with_marker,
    require_chromium,
    run_all_cells,
    save_screenshot,
    scroll_to_centre,
    shut_down_all_sessions,
    start_jupyterlab,
    start_server,
    stop_server,
    type_damping,
    wait_for,
    wait_for_all_cells_to_run,
    wait_for_no_processes,
    wait_for_panel,
)
from playwright.sync_api import sync_playwright

pytestmark = pytest.mark.browser

#: the notebooks whose explorer panels are driven
EXPLORER_NOTEBOOKS = ["02_saddles_in_2d", "03_series_for_the_absolute_inverse"]
#: the notebooks whose benchmark panel is driven (K changed, Run pressed, a bad λ refused)
BENCHMARK_NOTEBOOKS = ["04_series_sfn_on_a_small_network", "06_resnet18_cifar10"]
ALL_NOTEBOOKS = sorted(path.stem for path in NOTEBOOK_DIR.glob("[0-9][0-9]_*.py"))
FIRST_NOTEBOOK = ALL_NOTEBOOKS[0]
#: every server started in this session carries MARKER_VARIABLE=<this tag>:<its own id>
SESSION_TAG = f"pytest-{os.getpid()}-{uuid.uuid4().hex[:8]}"
K_PRESSES = 3


def new_marker() -> str:
    return f"{SESSION_TAG}:{uuid.uuid4().hex}"


# --- fixtures ----------------------------------------------------------------------------------


@pytest.fixture(scope="session", autouse=True)
def no_stray_processes():
    """After all browser tests: no process started by any of their servers is left."""
    yield
    left = processes_with_marker(SESSION_TAG)
    assert not left, f"processes started by the browser tests are still running: {left}"


@pytest.fixture(scope="session")
def browser():
    executable = require_chromium()
    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=executable, headless=True,
                                              args=CHROMIUM_ARGS)
        try:
            yield chromium
        finally:
            chromium.close()


@pytest.fixture
def page(browser):
    context = browser.new_context(viewport={"width": 1400, "height": 1000})
    context.set_default_timeout(60_000)
    try:
        yield context.new_page()
    finally:
        context.close()


@pytest.fixture(scope="session")
def lab_server(tmp_path_factory):
    """One JupyterLab for the session, serving a throwaway copy of the notebooks."""
    server = start_jupyterlab(tmp_path_factory.mktemp("lab"), ARTIFACTS / "jupyterlab.log",
                              new_marker())
    try:
        yield server
    finally:
        stop_server(server)


@pytest.fixture
def lab(lab_server):
    """The session's JupyterLab; every kernel a test started is shut down after it."""
    yield lab_server
    shut_down_all_sessions(lab_server)


# --- the notebooks and their panels ------------------------------------------------------------


def exercise_explorer_panel(notebook: OpenNotebook, panel):
    """Drive one panel as a student would and check what it shows after each change."""
    scroll_to_centre(panel)
    start = wait_for_panel(notebook, panel,
                           lambda s: s.figure_width and s.readout and not s.message,
                           "the panel to show a figure and a readout, and no message")
    k = k_slider_value(panel)

    press_arrow_right_on_k_slider(panel, K_PRESSES)
    raised = wait_for_panel(notebook, panel, lambda s: s.figure != start.figure,
                            f"the figure to change after {K_PRESSES} × → on K = {k}")
    assert k_slider_value(panel) == k + K_PRESSES, "→ on the K slider's handle did not move it"
    assert not raised.message, f"a valid K = {k + K_PRESSES} gave the message {raised.message!r}"

    type_damping(panel, "0.5")
    damped = wait_for_panel(notebook, panel, lambda s: s.figure != raised.figure and not s.message,
                            "the figure to change after λ = 0.5 was typed")

    type_damping(panel, "-1")
    refused = wait_for_panel(notebook, panel, lambda s: NEGATIVE_DAMPING_MESSAGE in s.message,
                             f"the message {NEGATIVE_DAMPING_MESSAGE!r} after λ = -1 was typed")
    assert (refused.figure, refused.readout) == (damped.figure, damped.readout), (
        "a refused λ = -1 must leave the last good figure and readout in place"
    )

    type_damping(panel, "0.05")
    wait_for_panel(notebook, panel, lambda s: not s.message and s.figure != damped.figure,
                   "the panel to clear its message and redraw after λ = 0.05 was typed")


@pytest.mark.parametrize("name", EXPLORER_NOTEBOOKS)
def test_notebook_runs_and_its_explorer_panels_answer(lab, page, name):
    notebook = open_notebook(page, lab, f"{name}.ipynb")
    run_all_cells(notebook)
    wait_for_all_cells_to_run(notebook)
    assert_no_errors_shown(notebook)

    panels = explorer_panels(notebook)
    assert panels, f"{name}.ipynb shows no explorer panel (.sfn-panel) after Run All"
    for index, panel in enumerate(panels, start=1):
        exercise_explorer_panel(notebook, panel)
        scroll_to_centre(panel)
        save_screenshot(page, f"{name}--panel-{index}")
    assert_no_errors_shown(notebook)


def test_the_saddle_explorer_follows_a_dragged_slider(lab, page):
    """Mouse down on K's handle, move in steps: the figure changes before the mouse is up."""
    notebook = open_notebook(page, lab, "02_saddles_in_2d.ipynb")
    run_all_cells(notebook)
    wait_for_all_cells_to_run(notebook)
    panel = explorer_panels(notebook)[0]
    scroll_to_centre(panel)
    start = wait_for_panel(notebook, panel, lambda s: s.figure_width and not s.message,
                           "the saddle explorer to show its figure")
    k = k_slider_value(panel)
    drag_k_slider(page, panel, pixels=120, moves=8)
    try:
        moved = wait_for(lambda: (state := panel_state(panel)).figure != start.figure and state,
                         WIDGET_TIMEOUT_S, "the figure to change while K's handle is held",
                         fail=notebook.fail)
        k_during = k_slider_value(panel)
        save_screenshot(page, "02_saddles_in_2d--dragging-k")
    finally:
        page.mouse.up()
    assert k_during > k, f"dragging K's handle right did not raise K = {k} (shows {k_during})"
    assert moved.readout, "the readout went blank during the drag"
    released = wait_for_panel(notebook, panel, lambda s: not s.message,
                              "the panel to settle after the mouse was released")
    assert k_slider_value(panel) >= k_during and released.figure != start.figure
    assert_no_errors_shown(notebook)


def benchmark_panel_state(panel) -> tuple[str, str, str]:
    """What a person sees of a benchmark panel: (figure digest, results table, message)."""
    return (figure_digest(panel)[0], panel.locator(".sfn-results").text_content().strip(),
            panel.locator(".sfn-message").text_content().strip())


@pytest.mark.parametrize("name", BENCHMARK_NOTEBOOKS)
def test_notebook_runs_and_its_benchmark_panel_trains(lab, page, name):
    notebook = open_notebook(page, lab, f"{name}.ipynb")
    run_all_cells(notebook)
    wait_for_all_cells_to_run(notebook)
    assert_no_errors_shown(notebook)
    panel = notebook.panel.locator(".jp-OutputArea-output .sfn-benchmark-panel").first
    assert panel.count() == 1, f"{name}.ipynb shows no benchmark panel after Run All"
    scroll_to_centre(panel)
    before = benchmark_panel_state(panel)

    k = k_slider_value(panel)
    press_arrow_right_on_k_slider(panel, 1)
    wait_for(lambda: k_slider_value(panel) == k + 1, WIDGET_TIMEOUT_S, "K to move by one",
             fail=notebook.fail)
    panel.locator(".sfn-run button, button.sfn-run").first.click()
    trained = wait_for(
        lambda: (state := benchmark_panel_state(panel))[0] != before[0] and "optimiser"
        in state[1] and not state[2] and state, WIDGET_TIMEOUT_S,
        "the new run's figure and results table after Run was pressed", fail=notebook.fail)

    type_damping(panel, "-1")
    panel.locator(".sfn-run button, button.sfn-run").first.click()
    wait_for(lambda: "damping" in benchmark_panel_state(panel)[2], WIDGET_TIMEOUT_S,
             "the panel to refuse λ = -1 with a message naming the damping", fail=notebook.fail)
    assert benchmark_panel_state(panel)[0] == trained[0], "a refused run changed the figure"
    save_screenshot(page, f"{name}--benchmark-panel")
    assert_no_errors_shown(notebook)


# --- jupytext pairing through the server -------------------------------------------------------


def cells_of(notebook: dict) -> list[tuple[str, str]]:
    return [(cell["cell_type"], cell["source"]) for cell in notebook["cells"]]


def add_line_to_first_markdown_cell(notebook: dict, line: str) -> dict:
    cell = next(c for c in notebook["cells"] if c["cell_type"] == "markdown")
    cell["source"] += f"\n\n{line}"
    return notebook


def read_pair_from_disk(folder: Path, name: str):
    return jupytext.read(folder / f"{name}.py"), nbformat.read(folder / f"{name}.ipynb", 4)


@pytest.mark.parametrize("name", ALL_NOTEBOOKS)
def test_py_and_ipynb_are_one_notebook_in_jupyterlab(lab, name):
    folder = lab.root_dir / f"pairing-{name}"
    folder.mkdir()
    shutil.copy(NOTEBOOK_DIR / f"{name}.ipynb", folder)
    shutil.copy(NOTEBOOK_DIR / f"{name}.py", folder)  # the text file last: it is the newer one
    base = f"/api/contents/{folder.name}/{name}"

    def opened(extension):
        model = lab.api("GET", f"{base}.{extension}?type=notebook&content=1")
        assert model["type"] == "notebook", f"the server opens {name}.{extension} as a file"
        return model["content"]

    assert cells_of(opened("py")) == cells_of(opened("ipynb")), (
        f"JupyterLab shows {name}.py and {name}.ipynb as different notebooks"
    )
    for saved, other in [("py", "ipynb"), ("ipynb", "py")]:
        line = f"Saved through {name}.{saved} ({secrets.token_hex(4)})."
        content = add_line_to_first_markdown_cell(opened(saved), line)
        lab.api("PUT", f"{base}.{saved}", {"type": "notebook", "format": "json",
                                             "content": content})
        from_py, from_ipynb = read_pair_from_disk(folder, name)
        assert line in (folder / f"{name}.{other}").read_text(), (
            f"saving {name}.{saved} in JupyterLab did not update {name}.{other} on disk"
        )
        assert cells_of(from_py) == cells_of(from_ipynb) == cells_of(content)
        assert cells_of(opened(other)) == cells_of(content)


# --- the README's main command -----------------------------------------------------------------


def title_of(name: str) -> str:
    """The heading of the notebook's first cell, e.g. "01 · Hessian-vector products"."""
    first = jupytext.read(NOTEBOOK_DIR / f"{name}.py").cells[0]
    return re.match(r"#\s*(.+)", first.source).group(1).strip()


def environment_is_installed() -> bool:
    """Whether scripts/setup.sh will find everything installed (its marker is up to date)."""
    marker = ROOT / ".venv" / ".sfn-teach-installed"
    pyproject = ROOT / "pyproject.toml"
    return marker.exists() and marker.stat().st_mtime >= pyproject.stat().st_mtime


def expect_landing(page):
    """JupyterLab's file browser shows notebooks/ with one entry per notebook, its .ipynb."""
    expected = ("notebooks", [f"{name}.ipynb" for name in ALL_NOTEBOOKS])
    seen = []

    def shows_the_notebooks():
        folder, names = file_browser(page)
        seen.append((folder, sorted(names)))
        return seen[-1] == expected

    def fail(message):
        shot = save_screenshot(page, "failure--lab-sh-landing")
        pytest.fail(f"{message}; the file browser shows folder {seen[-1][0]!r} listing "
                    f"{seen[-1][1]} (screenshot: {shot})", pytrace=False)

    wait_for(shows_the_notebooks, OPEN_TIMEOUT_S, f"the file browser to show folder "
             f"{expected[0]!r} listing {expected[1]}", fail=fail)
    save_screenshot(page, "lab-sh--landing")


def test_readme_main_command_serves_the_notebooks(page, tmp_path):
    opened_files = [NOTEBOOK_DIR / f"{FIRST_NOTEBOOK}.{extension}" for extension in ("ipynb", "py")]
    digests_before = [file_digest(path) for path in opened_files]
    installed = environment_is_installed()
    port, token = free_port(), secrets.token_hex(16)
    options = lab_options(port, token, tmp_path / "lab-state")
    server = start_server(
        ["bash", "scripts/lab.sh", "--no-browser", *options],
        cwd=ROOT, root_dir=ROOT, port=port, token=token,
        log_path=ARTIFACTS / "lab-sh.log", marker=new_marker(), env={"SFN_TEACH_FAST": "1"},
    )
    try:
        page.goto(f"{server.url}/?token={token}")  # the browser that lab.sh opens lands there too
        expect_landing(page)
        first = f"/api/contents/notebooks/{FIRST_NOTEBOOK}"
        as_py, as_ipynb = (server.api("GET", f"{first}.{extension}?type=notebook&content=1")
                           for extension in ("py", "ipynb"))
        assert cells_of(as_py["content"]) == cells_of(as_ipynb["content"]), (
            f"scripts/lab.sh does not serve {FIRST_NOTEBOOK}.py and .ipynb as one notebook"
        )
        notebook = open_notebook(page, server, f"notebooks/{FIRST_NOTEBOOK}.ipynb")
        heading = notebook.panel.locator(".jp-MarkdownCell h1").first
        wait_for(lambda: title_of(FIRST_NOTEBOOK) in (heading.text_content() or ""), 30,
                 f"the title cell {title_of(FIRST_NOTEBOOK)!r} to show", fail=notebook.fail)
        save_screenshot(page, f"lab-sh--{FIRST_NOTEBOOK}")
    finally:
        page.close()
        stop_server(server)

    assert server.process.returncode is not None
    log = server.log_tail(lines=10_000)
    if installed:
        assert "installing" not in log, (
            f"scripts/setup.sh installed packages although everything was installed:\n{log}"
        )
    assert [file_digest(path) for path in opened_files] == digests_before, (
        f"opening {FIRST_NOTEBOOK} through scripts/lab.sh changed it in the repository"
    )


# --- failures are reported clearly, and nothing is left running ---------------------------------


def test_missing_chromium_fails_and_says_how_to_install(tmp_path):
    with pytest.raises(pytest.fail.Exception, match=r"apt-get install -y chromium"):
        require_chromium(tmp_path / "chromium")


def test_a_missing_notebook_fails_clearly(lab, page):
    with pytest.raises(pytest.fail.Exception, match="does not exist on the JupyterLab") as failure:
        open_notebook(page, lab, "99_not_a_notebook.ipynb")
    assert f"{FIRST_NOTEBOOK}.ipynb" in str(failure.value), "the message lists what is there"


@pytest.mark.parametrize("error_cell", [1, 2], ids=["error-stops-the-run", "error-in-last-cell"])
def test_an_error_in_a_cell_fails_clearly(lab, page, error_cell):
    cells = [nbformat.v4.new_code_cell(source) for source in ("x = 1", "y = 2")]
    cells.insert(error_cell, nbformat.v4.new_code_cell("1 / 0"))
    path = lab.root_dir / f"broken-{error_cell}.ipynb"
    nbformat.write(nbformat.v4.new_notebook(cells=cells, metadata={"kernelspec": {
        "name": "python3", "display_name": "Python 3", "language": "python"}}), path)
    notebook = open_notebook(page, lab, path.name)
    with pytest.raises(pytest.fail.Exception, match="ZeroDivisionError"):
        run_all_cells(notebook)
        wait_for_all_cells_to_run(notebook)
        assert_no_errors_shown(notebook)


def kill_kernel_process(notebook: OpenNotebook):
    os.kill(kernel_process(notebook.server, notebook.kernel_id), signal.SIGKILL)


def shut_kernel_down_by_rest(notebook: OpenNotebook):
    notebook.server.api("DELETE", f"/api/kernels/{notebook.kernel_id}")


@pytest.mark.parametrize("kill", [kill_kernel_process, shut_kernel_down_by_rest],
                         ids=["SIGKILL", "REST-shutdown"])
def test_a_kernel_killed_during_run_all_fails_clearly(lab, page, kill):
    notebook = open_notebook(page, lab, f"{FIRST_NOTEBOOK}.ipynb")
    run_all_cells(notebook)
    kill(notebook)
    with pytest.raises(pytest.fail.Exception, match=rf"the kernel of {FIRST_NOTEBOOK}.ipynb died"):
        wait_for_all_cells_to_run(notebook, timeout=60)


def test_a_stopped_server_leaves_no_process(tmp_path):
    """stop_server ends the server and its kernels (which run in process groups of their own)."""
    server = start_jupyterlab(tmp_path, tmp_path / "server.log", new_marker())
    try:
        server.api("POST", "/api/kernels", {"name": "python3"})
        assert len(processes_with_marker(server.marker)) >= 2, "a server and its kernel run"
    finally:
        stop_server(server)
    assert not processes_with_marker(server.marker)
    assert MARKER_VARIABLE not in os.environ, "the marker is for the servers, not pytest"


#: run by the next test as a process of its own: start a JupyterLab server and a kernel, then wait
HOLD_A_SERVER = """
import sys, time
from pathlib import Path
from browser_support import start_jupyterlab

work, marker = Path(sys.argv[1]), sys.argv[2]
server = start_jupyterlab(work, work / "server.log", marker)
server.api("POST", "/api/kernels", {"name": "python3"})
(work / "ready").touch()
time.sleep(600)
"""


def test_a_killed_test_process_leaves_no_server_or_kernel(tmp_path):
    """A server and kernel that a test process started end with it, even when it is SIGKILLed."""
    marker, log = new_marker(), tmp_path / "holder.log"
    with open(log, "wb") as output:
        holder = subprocess.Popen([sys.executable, "-c", HOLD_A_SERVER, str(tmp_path), marker],
                                  cwd=Path(__file__).parent, stdout=output,
                                  stderr=subprocess.STDOUT)
    try:
        def ready():
            if holder.poll() is not None:
                pytest.fail(f"the process holding a server exited with {holder.returncode}:\n"
                            f"{log.read_text()[-2000:]}", pytrace=False)
            return (tmp_path / "ready").exists()

        wait_for(ready, SERVER_START_TIMEOUT_S + OPEN_TIMEOUT_S,
                 "a process to start a JupyterLab server and a kernel")
        running = list(processes_with_marker(marker).values())
        assert any("jupyterlab" in command for command in running), running
        assert any("ipykernel" in command for command in running), running
    finally:
        holder.kill()
        holder.wait()
    killed = time.monotonic()
    left = wait_for_no_processes(marker, 20)
    assert not left, f"the server and kernel survive the SIGKILL of their test process: {left}"
    print(f"server and kernel gone {time.monotonic() - killed:.1f} s after the SIGKILL")

