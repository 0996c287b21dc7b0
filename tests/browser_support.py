"""Helpers for the browser tests (tests/test_browser.py): a JupyterLab server in its own process
group, watched so that it ends with the test process (tests/process_watchdog.py), its REST API,
and a notebook driven in headless Chromium the way a person drives it.

Every helper that waits does so for a condition, with a bounded timeout, and fails with a
sentence that says what did not happen (a missing notebook, a dead kernel, a cell that never
ran, a widget that did not render), plus a screenshot in ``test-artifacts/browser/`` when a
page is involved.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote

import pytest
from process_watchdog import MARKER_VARIABLE, RELEASE, processes_with_marker, signal_processes

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOK_DIR = ROOT / "notebooks"
ARTIFACTS = ROOT / "test-artifacts" / "browser"

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--no-sandbox", "--disable-gpu", "--disable-background-networking",
    "--disable-component-update", "--no-first-run", "--disable-quic", "--disable-sync",
]

#: what JupyterLab shows in an output area when a widget fails, or has not rendered yet
WIDGET_FAILURES = ("Error displaying widget", "Loading widget...")
#: what an error output (a traceback) looks like once rendered
ERROR_OUTPUT = re.compile(r"Traceback|^\w*(Error|Exception)\b", re.M)
#: the message a panel shows for a negative damping (sfn_teach.widgets._check_damping)
NEGATIVE_DAMPING_MESSAGE = "λ must be a finite number ≥ 0"

SERVER_START_TIMEOUT_S = 120  # scripts/lab.sh may first check (or install) the environment
OPEN_TIMEOUT_S = 90  # page load and kernel start, on a loaded 2-core machine
RUN_ALL_TIMEOUT_S = 420  # fast mode: 45 s for notebook 04 on an idle machine, over 180 s at load 7
WIDGET_TIMEOUT_S = 60  # a redraw after a control changed
STOP_TIMEOUT_S = 30


# --- waiting ---------------------------------------------------------------------------------


def wait_for(condition, timeout: float, waiting_for: str, interval: float = 0.25, fail=None):
    """Poll ``condition()`` until it returns something truthy, and return that.

    ``condition`` may itself fail to stop early (a dead kernel). On timeout, call
    ``fail("timed out after …s waiting for <waiting_for>")``.
    """
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            (fail or _fail)(f"timed out after {timeout:.0f}s waiting for {waiting_for}")
        time.sleep(interval)


def _fail(message: str):
    pytest.fail(message, pytrace=False)


# --- Chromium --------------------------------------------------------------------------------


def require_chromium(path: Path = CHROMIUM) -> str:
    """The path of Debian's Chromium; fail (never skip) with how to install it when missing."""
    if not (path.is_file() and os.access(path, os.X_OK)):
        pytest.fail(
            f"the browser tests need Debian's Chromium at {path}, which is missing: install it "
            "with `sudo apt-get update && sudo apt-get install -y chromium` (scripts/test.sh "
            "does this when it can), or deselect these tests with -m \"not browser\". Do not "
            "run `playwright install`: the tests use the system browser.",
            pytrace=False,
        )
    return str(path)


# --- processes ---------------------------------------------------------------------------------


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on now."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def copy_notebooks(destination: Path) -> Path:
    """A throwaway copy of the repository's layout: ``jupytext.toml``, ``benchmarks/`` (the
    configs notebooks 04 and 06 read) and ``notebooks/``.

    Each ``.py`` is written after its ``.ipynb`` (jupytext refuses a pair whose ``.ipynb`` is
    newer than its text file). Returns the copy of ``notebooks/``, the server's root.
    """
    notebooks = destination / "notebooks"
    notebooks.mkdir(parents=True)
    shutil.copy(ROOT / "jupytext.toml", destination)
    shutil.copytree(ROOT / "benchmarks", destination / "benchmarks")
    for ipynb in sorted(NOTEBOOK_DIR.glob("*.ipynb")):
        shutil.copy(ipynb, notebooks)
    for source in sorted(NOTEBOOK_DIR.glob("*.py")):
        shutil.copy(source, notebooks)
    return notebooks


# --- the server ------------------------------------------------------------------------------


def lab_options(port: int, token: str, state_dir: Path) -> list[str]:
    """Options for a JupyterLab server that only this test reaches: localhost, ``port``,
    ``token``, no browser; workspaces and user settings of its own in ``state_dir`` (nothing
    restored from a person's sessions, and no "Jupyter news?" prompt over the screenshots)."""
    settings = state_dir / "settings"
    notification = settings / "@jupyterlab" / "apputils-extension"
    notification.mkdir(parents=True)
    (notification / "notification.jupyterlab-settings").write_text(
        json.dumps({"fetchNews": "false", "checkForUpdates": False})
    )
    return [
        "--ServerApp.ip=127.0.0.1", f"--ServerApp.port={port}", "--ServerApp.port_retries=0",
        f"--IdentityProvider.token={token}", "--ServerApp.open_browser=False",
        f"--LabApp.workspaces_dir={state_dir / 'workspaces'}",
        f"--LabApp.user_settings_dir={settings}", "--LabApp.news_url=None",
    ]


@dataclass
class JupyterServer:
    """A JupyterLab server started by a test, leader of its own process group."""

    process: subprocess.Popen
    port: int
    token: str
    root_dir: Path
    log_path: Path
    marker: str  #: MARKER_VARIABLE's value in the environment of the server and its children
    watchdog: subprocess.Popen  #: ends them if the test process ends before stop_server

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def log_tail(self, lines: int = 25) -> str:
        text = self.log_path.read_text(errors="replace") if self.log_path.exists() else ""
        return "\n".join(text.splitlines()[-lines:])

    def api(self, method: str, path: str, body=None, expect=(200, 201, 204)):
        """Call the REST API; return the decoded JSON (or None); fail on another status."""
        status, payload = self.api_status(method, path, body)
        if status not in expect:
            pytest.fail(f"{method} {path} on the JupyterLab server answered {status}: {payload}")
        return payload

    def api_status(self, method: str, path: str, body=None):
        """Call the REST API; return ``(status, decoded JSON or text)`` whatever the status."""
        request = urllib.request.Request(
            self.url + path, method=method,
            data=None if body is None else json.dumps(body).encode(),
            headers={"Authorization": f"token {self.token}",
                     "Content-Type": "application/json"},
        )
        try:
            with urllib.request.urlopen(request, timeout=30) as response:
                status, raw = response.status, response.read()
        except urllib.error.HTTPError as error:
            status, raw = error.code, error.read()
        try:
            return status, json.loads(raw) if raw else None
        except ValueError:
            return status, raw.decode(errors="replace")

    def lab_url(self, path: str) -> str:
        """The URL a person opens: ``/lab/tree/<path>``, on a fresh workspace (``reset``)."""
        return f"{self.url}/lab/tree/{path}?reset&token={self.token}"


def start_server(command: list[str], *, cwd: Path, root_dir: Path, port: int, token: str,
                 log_path: Path, marker: str, env: dict | None = None,
                 timeout: float = SERVER_START_TIMEOUT_S) -> JupyterServer:
    """Start ``command`` (a JupyterLab server) in a new process group, wait until it answers.

    The caller must call :func:`stop_server`, in a ``finally`` or a fixture's teardown; if the
    test process ends first, however it ends, a watchdog ends the server and its kernels.
    """
    watchdog = start_watchdog(marker)
    environment = {**os.environ, **(env or {}), MARKER_VARIABLE: marker}
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "wb") as log:
        process = subprocess.Popen(command, cwd=cwd, env=environment, stdout=log,
                                   stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                   start_new_session=True)
    server = JupyterServer(process, port, token, root_dir, log_path, marker, watchdog)
    try:
        wait_until_answering(server, timeout)
    except BaseException:
        stop_server(server)
        raise
    return server


def start_watchdog(marker: str) -> subprocess.Popen:
    """Start tests/process_watchdog.py for ``marker``; this process holds its pipe's write end.

    It runs in a session of its own, so that a Ctrl-C meant for pytest does not stop it.
    """
    return subprocess.Popen([sys.executable, str(Path(__file__).with_name("process_watchdog.py")),
                             marker], stdin=subprocess.PIPE, start_new_session=True)


def release_watchdog(watchdog: subprocess.Popen):
    """Tell the watchdog that the processes it watched were stopped, and let it exit."""
    watchdog.stdin.write(RELEASE)
    watchdog.stdin.close()
    watchdog.wait(STOP_TIMEOUT_S)


def start_jupyterlab(work: Path, log_path: Path, marker: str) -> JupyterServer:
    """JupyterLab (this Python's) on a throwaway copy of the notebooks in ``work``, fast mode."""
    root = copy_notebooks(work)
    port, token = free_port(), secrets.token_hex(16)
    command = [sys.executable, "-m", "jupyterlab", f"--ServerApp.root_dir={root}",
               *lab_options(port, token, work / "lab-state")]
    if os.geteuid() == 0:
        command.append("--allow-root")
    return start_server(command, cwd=work, root_dir=root, port=port, token=token,
                        log_path=log_path, marker=marker, env={"SFN_TEACH_FAST": "1"})


def wait_until_answering(server: JupyterServer, timeout: float):
    """Poll ``/api/status`` with the token until it answers 200; fail if the server exits."""

    def answers():
        if server.process.poll() is not None:
            pytest.fail(f"the JupyterLab server exited with code {server.process.returncode} "
                        f"before answering on port {server.port}; the end of its log:\n"
                        f"{server.log_tail()}", pytrace=False)
        try:
            return server.api_status("GET", "/api/status")[0] == 200
        except OSError:
            return False

    wait_for(answers, timeout, f"the JupyterLab server to answer on port {server.port}")


def stop_server(server: JupyterServer):
    """SIGTERM the server's process group (the server shuts its kernels down), SIGKILL what is
    left after a timeout, and fail if any process the server started survives."""
    try:
        _stop_server_processes(server)
    finally:
        release_watchdog(server.watchdog)


def _stop_server_processes(server: JupyterServer):
    try:
        os.killpg(server.process.pid, signal.SIGTERM)
    except ProcessLookupError:
        pass
    try:
        server.process.wait(STOP_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        os.killpg(server.process.pid, signal.SIGKILL)
        server.process.wait(STOP_TIMEOUT_S)
    # kernels run in process groups of their own: give them the same time, then kill them
    leftovers = wait_for_no_processes(server.marker, STOP_TIMEOUT_S)
    signal_processes(server.marker, signal.SIGKILL)
    survivors = wait_for_no_processes(server.marker, 10)
    if survivors:
        pytest.fail(f"processes started by the JupyterLab server on port {server.port} survive "
                    f"SIGKILL: {survivors}", pytrace=False)
    if leftovers:
        pytest.fail(f"the JupyterLab server on port {server.port} left processes running after "
                    f"SIGTERM (they were killed): {leftovers}", pytrace=False)


def wait_for_no_processes(marker: str, timeout: float) -> dict[int, str]:
    """Wait until no process carries ``marker``; return those still there after ``timeout``."""
    deadline = time.monotonic() + timeout
    while (left := processes_with_marker(marker)) and time.monotonic() < deadline:
        time.sleep(0.2)
    return left


def file_browser(page) -> tuple[str, list[str]]:
    """What JupyterLab's file browser shows: its folder ("" for the server's root, else e.g.
    "notebooks") and the names of the entries listed in it."""
    browser = page.locator("#filebrowser")
    folder = "/".join(browser.locator(".jp-BreadCrumbs-item").all_text_contents())
    return folder, browser.locator(".jp-DirListing-itemText").all_text_contents()


def shut_down_all_sessions(server: JupyterServer):
    """Shut down every session (and its kernel) of the server: the next test starts clean."""
    for session in server.api("GET", "/api/sessions") or []:
        server.api("DELETE", f"/api/sessions/{session['id']}", expect=(204, 404))


def kernel_process(server: JupyterServer, kernel_id: str) -> int:
    """The pid of the kernel process ``kernel_id`` of ``server``."""
    pids = [pid for pid, command in processes_with_marker(server.marker).items()
            if f"kernel-{kernel_id}.json" in command]
    if len(pids) != 1:
        pytest.fail(f"expected one process for kernel {kernel_id}, found {pids}")
    return pids[0]


# --- a notebook in the browser -----------------------------------------------------------------


@dataclass
class OpenNotebook:
    """A notebook open in a JupyterLab tab: the page, its panel, and its kernel."""

    page: object  # playwright.sync_api.Page
    server: JupyterServer
    path: str
    panel: object  # playwright.sync_api.Locator of the .jp-NotebookPanel
    kernel_id: str

    def code_prompts(self) -> list[str]:
        """The execution prompts of the code cells in order: "[3]:", "[*]:", "[ ]:"."""
        return self.panel.locator(".jp-CodeCell .jp-InputPrompt").evaluate_all(
            "prompts => prompts.map(p => p.textContent.trim())"
        )

    def dialog_text(self) -> str:
        return dialog_text(self.page)

    def fail(self, message: str):
        """Fail with ``message``, a screenshot of the page, and the end of the server's log."""
        shot = save_screenshot(self.page, f"failure--{Path(self.path).stem}")
        pytest.fail(f"{message}\n(screenshot: {shot}; the end of the server's log:\n"
                    f"{self.server.log_tail(10)})", pytrace=False)


def dialog_text(page) -> str:
    """"Title: body" of each open JupyterLab dialog, "" when there is none."""
    return page.locator(".jp-Dialog").evaluate_all("""dialogs => dialogs.map(dialog =>
        [".jp-Dialog-header", ".jp-Dialog-body"]
            .map(part => (dialog.querySelector(part)?.textContent ?? "").trim())
            .filter(Boolean).join(": ")).join(" | ")""")


def save_screenshot(page, name: str) -> Path:
    """Save a screenshot of ``page`` as ``test-artifacts/browser/<name>.png``."""
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    path = ARTIFACTS / f"{name}.png"
    page.screenshot(path=str(path))
    return path


def open_notebook(page, server: JupyterServer, path: str) -> OpenNotebook:
    """Open ``path`` as a person does (its ``/lab/tree/`` URL) and wait for an idle kernel.

    Fails with a clear sentence when the file does not exist on the server, when JupyterLab
    shows an error dialog instead of the notebook, or when the kernel does not start.
    """
    status, _ = server.api_status("GET", f"/api/contents/{quote(path)}?content=0")
    if status == 404:
        listing = server.api("GET", "/api/contents?content=1")["content"]
        names = sorted(item["name"] for item in listing)
        pytest.fail(f"notebook {path!r} does not exist on the JupyterLab server (root "
                    f"{server.root_dir}); the server has: {', '.join(names)}", pytrace=False)
    page.goto(server.lab_url(path))
    tab = page.locator(".lm-DockPanel-tabBar .lm-TabBar-tab", has_text=Path(path).name)

    def tab_or_error_dialog():
        if dialog := dialog_text(page):
            pytest.fail(f"JupyterLab showed a dialog instead of opening {path}: {dialog}",
                        pytrace=False)
        return tab.count() == 1

    wait_for(tab_or_error_dialog, OPEN_TIMEOUT_S, f"JupyterLab to open a tab for {path}")
    panel = page.locator(f"#{tab.get_attribute('data-id')}")
    kernel_id = wait_for(lambda: _kernel_of(server, path), OPEN_TIMEOUT_S,
                         f"a kernel to be started for {path}")
    notebook = OpenNotebook(page, server, path, panel, kernel_id)
    wait_for(lambda: _kernel_status_shown(notebook) == "idle", OPEN_TIMEOUT_S,
             f"the kernel of {path} to show 'idle' in the notebook's toolbar", fail=notebook.fail)
    return notebook


def _kernel_of(server: JupyterServer, path: str) -> str | None:
    sessions = server.api("GET", "/api/sessions") or []
    return next((s["kernel"]["id"] for s in sessions if s["path"] == path and s["kernel"]), None)


def _kernel_status_shown(notebook: OpenNotebook) -> str | None:
    return notebook.panel.locator(".jp-Notebook-ExecutionIndicator").get_attribute("data-status")


def run_all_cells(notebook: OpenNotebook):
    """Run → Run All Cells, from the menu bar; return once the cells are queued ("[*]") or a
    cell has already run (a number in a prompt that was empty: short cells can queue, run
    and fail between two looks)."""
    page = notebook.page
    before = notebook.code_prompts()
    page.locator(".lm-MenuBar-itemLabel", has_text=re.compile(r"^Run$")).click()
    page.locator(".lm-Menu-itemLabel", has_text=re.compile(r"^Run All Cells$")).click()

    def started():
        prompts = notebook.code_prompts()
        return "[*]:" in prompts or any(
            now != then and re.fullmatch(r"\[\d+\]:", now) for now, then in zip(prompts, before))

    wait_for(started, OPEN_TIMEOUT_S, f"Run All to queue the cells of {notebook.path}",
             interval=0.05, fail=notebook.fail)


def check_kernel_alive(notebook: OpenNotebook):
    """Fail with a clear sentence when the notebook's kernel died, restarted or is gone."""
    status, kernel = notebook.server.api_status("GET", f"/api/kernels/{notebook.kernel_id}")
    if status == 404:
        notebook.fail(f"the kernel of {notebook.path} died: it was shut down or killed, and the "
                      "server no longer lists it")
    dialog = notebook.dialog_text()
    if "died" in dialog or "Restarting" in dialog or kernel.get("execution_state") == "dead":
        notebook.fail(f"the kernel of {notebook.path} died and was restarted (JupyterLab says: "
                      f"{dialog or kernel.get('execution_state')!r}); the cells it was running "
                      "were lost")


def wait_for_all_cells_to_run(notebook: OpenNotebook, timeout: float = RUN_ALL_TIMEOUT_S):
    """Wait until every code cell shows an execution count and the kernel is idle.

    Fails at once when the kernel dies, and when it sits idle with cells left unrun (a cell
    raised, which stops Run All: the message quotes the error).
    """
    idle_with_unrun_cells = []

    def all_ran():
        check_kernel_alive(notebook)
        prompts = notebook.code_prompts()
        unrun = [i + 1 for i, prompt in enumerate(prompts) if not _has_count(prompt)]
        idle = _kernel_status_shown(notebook) == "idle"
        if not unrun:
            return idle
        idle_with_unrun_cells.append(idle and "[*]:" not in prompts)
        if idle_with_unrun_cells[-8:] == [True] * 8:  # two seconds idle, with nothing queued
            errors = error_outputs(notebook)
            notebook.fail(
                f"the run of {notebook.path} stopped with code cells {unrun} (of {len(prompts)}) "
                "not run; " + (f"a cell raised:\n{errors[0][:2000]}" if errors else
                               "no cell shows an error: was the kernel interrupted or restarted?")
            )
        return False

    wait_for(all_ran, timeout, f"all code cells of {notebook.path} to run", fail=notebook.fail)


def _has_count(prompt: str) -> bool:
    return re.fullmatch(r"\[\d+\]:?", prompt) is not None


def error_outputs(notebook: OpenNotebook) -> list[str]:
    """The text of every output that shows an error (a traceback)."""
    stderr = notebook.panel.locator(
        '.jp-OutputArea-output[data-mime-type="application/vnd.jupyter.stderr"]'
    ).all_text_contents()
    return [text for text in stderr if ERROR_OUTPUT.search(text)]


def assert_no_errors_shown(notebook: OpenNotebook):
    """No cell shows a traceback, and every widget rendered (no failure or placeholder)."""
    if errors := error_outputs(notebook):
        notebook.fail(f"{notebook.path} shows {len(errors)} error output(s); the first:\n"
                      f"{errors[0][:2000]}")
    if dialog := notebook.dialog_text():
        notebook.fail(f"{notebook.path} shows a dialog: {dialog}")
    outputs = notebook.panel.locator(".jp-OutputArea-output")

    def widgets_rendered():
        texts = outputs.evaluate_all("outputs => outputs.map(o => o.textContent)")
        failures = [t for t in texts if any(f in t for f in WIDGET_FAILURES)]
        if any(WIDGET_FAILURES[0] in t for t in failures):
            notebook.fail(f"{notebook.path} shows a widget that failed to render: "
                          f"{failures[0][:500]}")
        return not failures

    wait_for(widgets_rendered, WIDGET_TIMEOUT_S,
             f"every widget of {notebook.path} to render (no 'Loading widget...' left)",
             fail=notebook.fail)


# --- the explorer panels (sfn_teach.widgets) ---------------------------------------------------


@dataclass(frozen=True)
class PanelState:
    """What a person sees of a panel: the readout, the message and the figure (by digest)."""

    readout: str
    message: str
    figure: str  # SHA-256 of the image's bytes, "" when no image is shown
    figure_width: int


_FIGURE_DIGEST = """async (figure) => {
    let bytes, width;
    if (figure.tagName === "IMG") {  // a PNG in an ipywidgets.Image
        if (!figure.src || !figure.naturalWidth) return ["", 0];
        bytes = await (await fetch(figure.src)).arrayBuffer();
        width = figure.naturalWidth;
    } else {  // plots drawn in the browser (bqplot): their SVG
        const marks = Array.from(figure.querySelectorAll("svg"), m => m.outerHTML);
        if (!marks.length) return ["", 0];
        bytes = new TextEncoder().encode(marks.join("\\n"));
        width = Math.round(figure.getBoundingClientRect().width);
    }
    const digest = await crypto.subtle.digest("SHA-256", bytes);
    return [Array.from(new Uint8Array(digest), b => b.toString(16).padStart(2, "0")).join(""),
            width];
}"""


def explorer_panels(notebook: OpenNotebook) -> list:
    """The explorer panels (``.sfn-panel``) shown in the notebook, in order."""
    panels = notebook.panel.locator(".jp-OutputArea-output .sfn-panel")
    return [panels.nth(i) for i in range(panels.count())]


def figure_digest(panel) -> tuple[str, int]:
    """SHA-256 of what the panel's figure (``.sfn-figure``) shows, and its width in pixels:
    of the PNG of an image, or of the SVG of the marks of plots drawn in the browser."""
    figure, width = panel.locator(".sfn-figure").evaluate(_FIGURE_DIGEST)
    return figure, width


def panel_state(panel) -> PanelState:
    figure, width = figure_digest(panel)
    return PanelState(
        readout=panel.locator(".sfn-readout").text_content().strip(),
        message=panel.locator(".sfn-message").text_content().strip(),
        figure=figure, figure_width=width,
    )


def scroll_to_centre(element):
    """Scroll the notebook so that ``element`` is in the middle of the view."""
    element.evaluate("element => element.scrollIntoView({block: 'center'})")


def k_slider_value(panel) -> int:
    """The K shown beside the slider."""
    return int(panel.locator(".sfn-k-slider .widget-readout").text_content())


def press_arrow_right_on_k_slider(panel, times: int):
    """Focus the K slider's handle and press → ``times`` times, as a person does."""
    handle = panel.locator(".sfn-k-slider .noUi-handle")
    handle.focus()
    for _ in range(times):
        handle.press("ArrowRight")


def drag_k_slider(page, panel, pixels: int, moves: int):
    """Press the mouse on the K slider's handle and move it ``pixels`` to the right in
    ``moves`` steps (a pause after each, as a hand moves), without releasing it: the caller
    calls ``page.mouse.up()``."""
    box = panel.locator(".sfn-k-slider .noUi-handle").bounding_box()
    x, y = box["x"] + box["width"] / 2, box["y"] + box["height"] / 2
    page.mouse.move(x, y)
    page.mouse.down()
    for move in range(1, moves + 1):
        page.mouse.move(x + pixels * move / moves, y, steps=4)
        time.sleep(0.2)


def type_damping(panel, text: str):
    """Click the λ text box, replace its contents by typing ``text``, and press Enter."""
    box = panel.locator(".sfn-damping-text input")
    box.click()
    box.press("Control+A")
    box.press_sequentially(text)
    box.press("Enter")


def wait_for_panel(notebook: OpenNotebook, panel, accept, waiting_for: str) -> PanelState:
    """Wait until the panel's state satisfies ``accept(state)`` and has settled (the same for
    a second, the kernel idle): a burst of changes redraws several times."""
    seen = []

    def settled():
        check_kernel_alive(notebook)
        state = panel_state(panel)
        seen.append(state)
        stable = seen[-4:] == [state] * 4 and _kernel_status_shown(notebook) == "idle"
        return state if accept(state) and stable else None

    def describe_last():
        return seen[-1] if seen else "nothing read"

    return wait_for(settled, WIDGET_TIMEOUT_S, waiting_for, fail=lambda message: notebook.fail(
        f"{message} in {notebook.path}; the panel shows {describe_last()}"))


def file_digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()
