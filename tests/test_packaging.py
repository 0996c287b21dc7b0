"""Packaging: pyproject.toml and environment.yml agree; the README's example and commands hold."""

import re
import subprocess
import sys
from pathlib import Path

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib

ROOT = Path(__file__).resolve().parents[1]


def pyproject():
    return tomllib.loads((ROOT / "pyproject.toml").read_text())


def environment_pip_requirements():
    """The `pip:` list of environment.yml (a flat YAML list; parsed without a YAML library)."""
    lines = (ROOT / "environment.yml").read_text().splitlines()
    start = next(i for i, line in enumerate(lines) if line.strip() == "- pip:")
    requirements = []
    for line in lines[start + 1 :]:
        match = re.match(r"\s+- (.+)", line)
        if not match:
            break
        requirements.append(match.group(1).strip())
    return requirements


def test_environment_yml_lists_the_same_dependencies_as_pyproject():
    project = pyproject()["project"]
    extras = project["optional-dependencies"]
    assert set(extras) == {"dev", "tune"}  # a new extra: decide whether environment.yml has it
    expected = set(project["dependencies"]) | set(extras["dev"]) | set(extras["tune"])
    listed = set(environment_pip_requirements()) - {"-e ."}
    assert listed == expected, (
        f"only in environment.yml: {sorted(listed - expected)}; "
        f"only in pyproject.toml: {sorted(expected - listed)}"
    )
    assert "-e ." in environment_pip_requirements()


def test_runtime_dependencies_are_the_documented_ones():
    names = {re.split(r"[<>=\[ ;]", r)[0] for r in pyproject()["project"]["dependencies"]}
    assert names == {
        "torch", "numpy", "matplotlib", "ipywidgets", "bqplot", "jupyterlab", "jupytext", "tqdm",
        "tomli", "pytorch-optimizer", "asdfghjkl",
    }


def test_ci_runs_the_readme_test_command():
    readme = (ROOT / "README.md").read_text()
    assert "bash scripts/test.sh" in readme and "bash scripts/lab.sh" in readme
    assert "scripts/test.sh" in (ROOT / ".ci" / "run").read_text()
    setup = (ROOT / "scripts" / "setup.sh").read_text()
    assert "torch==2.13.0" in setup  # CI must never pull a CUDA build
    assert '-e ".[dev,tune]"' in setup  # the test suite runs `bench tune`
    assert "ruff check" in (ROOT / "scripts" / "test.sh").read_text()


def test_readme_example_runs_and_converges():
    code = re.findall(r"```python\n(.*?)```", (ROOT / "README.md").read_text(), re.S)[0]
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=120
    )
    assert result.returncode == 0, result.stderr
    errors = [float(e) for e in re.findall(r"relative error ([0-9.e+-]+)", result.stdout)]
    assert len(errors) == 2 and errors[1] < errors[0] < 0.2
