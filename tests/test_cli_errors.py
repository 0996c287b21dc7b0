"""The benchmark CLI's errors: one line on stderr, the documented exit code, no traceback, and
nothing that was written before changed or lost (file bytes compared before and after)."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from bench_configs import ADAM, digits_config, without_timing, write_config

from sfn_teach.bench.__main__ import main
from sfn_teach.hvp import DENSE_MAX_DIM

ROOT = Path(__file__).resolve().parent.parent

# Adam on the digits, one seed: 7 records (steps 0, 2, …, 12), a checkpoint after records 2, 4,
# 6 and 7, so checkpoint.pt covers 7 records and checkpoint.pt.prev covers 6
SMALL = digits_config("small", [{**ADAM, "lr": 0.01}], hidden=[8], steps=12, batch_size=200,
                      evals=6, checkpoint_every=2, seeds=[0])
RUN = "adam-seed0"  # the run's folder


def stderr_line(capsys, argv, code, prefix="error: "):
    """Run the CLI on ``argv``; check its exit code and that stderr is one line starting with
    ``prefix`` and no traceback; return that line."""
    assert main([str(arg) for arg in argv]) == code
    return only_line(capsys.readouterr().err, prefix)


def only_line(stderr, prefix="error: "):
    """The one line of ``stderr``, checked: it starts with ``prefix``, no traceback."""
    assert "Traceback" not in stderr
    lines = stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith(prefix), stderr
    return lines[0]


def snapshot(folder):
    """Every file under ``folder`` (hidden ones too) with its bytes."""
    return {path.relative_to(folder): path.read_bytes()
            for path in sorted(Path(folder).rglob("*")) if path.is_file()}


def read_lines(path):
    return Path(path).read_bytes().splitlines(keepends=True)


@pytest.fixture
def config_path(tmp_path):
    return write_config(tmp_path, SMALL)


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    """A finished run folder of SMALL, made once; tests work on copies (:func:`fresh_run`)."""
    folder = tmp_path_factory.mktemp("finished")
    config = write_config(folder, SMALL)
    assert main(["run", str(config), "--out", str(folder / "out"), "--quiet"]) == 0
    return folder / "out"


@pytest.fixture
def fresh_run(finished_run, tmp_path, config_path, capsys):
    """A copy of the finished run folder, and the config it was made with."""
    capsys.readouterr()
    out = tmp_path / "out"
    shutil.copytree(finished_run, out)
    return out, config_path


def cli_process(argv, env=(), command=(sys.executable, "-m", "sfn_teach.bench")):
    """Run ``command ARGV`` (the CLI) in a subprocess: one thread, the variables ``env``
    added to the environment (no fault point unless it sets one)."""
    environment = {**os.environ, "OMP_NUM_THREADS": "1", "SFN_TEACH_FAST": "0"}
    environment.pop("SFN_TEACH_KILL_AT", None)
    environment.update(env)
    return subprocess.run([*command, *map(str, argv)], env=environment, cwd=ROOT,
                          capture_output=True, text=True, timeout=120)


# --------------------------------------------------------------------------------------------
# The config file (exit 2, nothing written)
# --------------------------------------------------------------------------------------------


def test_config_that_is_not_utf8_is_a_config_error(tmp_path, capsys):
    path = tmp_path / "latin1.toml"
    data = 'task = "digits"\n# benchmark by Fran\xe7ois\n'.encode("latin-1")
    path.write_bytes(data)
    line = stderr_line(capsys, ["run", path, "--out", tmp_path / "out"], 2)
    assert str(path) in line and "not UTF-8" in line
    assert path.read_bytes() == data and not (tmp_path / "out").exists()


def test_config_path_that_is_a_folder_says_so(tmp_path, capsys):
    folder = tmp_path / "configs.toml"
    folder.mkdir()
    line = stderr_line(capsys, [folder, "--out", tmp_path / "out"], 2)
    assert f"{folder} is a folder" in line and "does not exist" not in line
    assert not (tmp_path / "out").exists()


def test_dense_optimiser_on_more_parameters_than_the_dense_limit_is_refused(tmp_path, capsys):
    """64-55-10 has 4,135 parameters, just over DENSE_MAX_DIM: refused before any work, where
    it once passed the config's own limit and failed at step 1 with a half-written folder."""
    config = {**SMALL, "model": {"hidden": [55]},
              "optimizers": [{"name": "exact", "type": "exact_sfn", "damping": 1.0}]}
    assert DENSE_MAX_DIM < 64 * 55 + 55 + 55 * 10 + 10 <= 5000
    path = tmp_path / "dense.json"
    path.write_text(json.dumps(config))
    line = stderr_line(capsys, ["run", path, "--out", tmp_path / "out"], 2)
    assert "optimizers[0].type" in line and "4135 parameters" in line
    assert f"DENSE_MAX_DIM = {DENSE_MAX_DIM}" in line
    assert not (tmp_path / "out").exists()


# --------------------------------------------------------------------------------------------
# The output folder (exit 1, nothing written)
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("below", [True, False], ids=["below a file", "a file"])
def test_out_below_or_at_an_existing_file(tmp_path, config_path, capsys, below):
    notes = tmp_path / "notes.txt"
    notes.write_text("my notes\n")
    out = notes / "run" if below else notes
    line = stderr_line(capsys, ["run", config_path, "--out", out, "--quiet"], 1)
    assert f"cannot create the run folder {out}: {notes} is a file, not a folder" in line
    assert snapshot(tmp_path) == {Path("notes.txt"): b"my notes\n",
                                  Path("small.json"): config_path.read_bytes()}


def test_output_folder_the_user_cannot_write(tmp_path, config_path):
    """A real permission error. Root ignores permission bits through the capability
    CAP_DAC_OVERRIDE, so as root the CLI runs without it (``setpriv``), still as root."""
    out = tmp_path / "out"
    out.mkdir()
    out.chmod(0o555)  # read and enter, not write
    command = [sys.executable, "-m", "sfn_teach.bench"]
    if os.geteuid() == 0:
        if shutil.which("setpriv") is None:
            pytest.skip("running as root, and setpriv (util-linux), which could take away "
                        "root's power to write anywhere, is not installed")
        command = ["setpriv", "--bounding-set=-dac_override", *command]
    result = cli_process(["run", config_path, "--out", out, "--quiet"], command=command)
    line = only_line(result.stderr)
    assert result.returncode == 1
    assert line == f"error: cannot write {out / 'config.json'}: Permission denied"
    assert list(out.iterdir()) == []


# --------------------------------------------------------------------------------------------
# A damaged run folder: recover from a checkpoint where possible, else refuse (exit 1)
# --------------------------------------------------------------------------------------------


def damage_line(path, number, text):
    """Replace line ``number`` (from 1) of ``path`` by ``text``."""
    lines = read_lines(path)
    lines[number - 1] = text
    path.write_bytes(b"".join(lines))


def records_of(out):
    return [json.loads(line) for line in read_lines(out / RUN / "records.jsonl")]


def test_damaged_record_after_the_previous_checkpoint_is_remade(fresh_run, capsys):
    out, config = fresh_run
    records_path = out / RUN / "records.jsonl"
    before, lines = records_of(out), read_lines(records_path)
    damage_line(records_path, 7, b'{"run_id": "adam-se\xff\xfe\n')
    line = stderr_line(capsys, ["run", config, "--out", out, "--resume", "--quiet"], 0,
                      prefix="warning: ")
    assert f"line 7 of {records_path} is damaged (not UTF-8 text" in line
    assert f"resuming from the previous checkpoint {out / RUN / 'checkpoint.pt.prev'}" in line
    assert read_lines(records_path)[:6] == lines[:6]  # the records before it: untouched
    assert without_timing(records_of(out)) == without_timing(before)
    assert main(["report", str(out)]) == 0


DAMAGED_LINES = [  # (a damaged line 3, what the error says of it)
    (b'{"run_id": "adam-se\n', "not JSON: Unterminated string"),
    (b"\0" * 40 + b"\n", "not JSON: Expecting value"),
    (b"[1, 2]\n", "a JSON list, not an object"),
    (b"\n", "empty"),
]


@pytest.mark.parametrize("text, problem", DAMAGED_LINES, ids=["cut short", "zeros", "a list",
                                                              "empty"])
def test_damaged_record_that_every_checkpoint_covers_is_refused(fresh_run, capsys, text,
                                                                problem):
    out, config = fresh_run
    records_path = out / RUN / "records.jsonl"
    damage_line(records_path, 3, text)
    files = snapshot(out)
    line = stderr_line(capsys, ["run", config, "--out", out, "--resume", "--quiet"], 1)
    assert f"line 3 of {records_path} is damaged ({problem}" in line
    assert f"delete the run folder {out / RUN} to run that run again" in line
    assert snapshot(out) == files
    line = stderr_line(capsys, ["report", out], 1)
    assert line.startswith(f"error: line 3 of {records_path} is damaged ({problem}")
    assert snapshot(out) == files


@pytest.mark.parametrize("content, problem", [
    (b"", "(empty)"),
    (b'{"config": {"task": "dig', "(not JSON: "),
    (b"[1, 2]", "(a JSON list, not an object)"),
    (b'{"config": {}}', "(a JSON object without the fields config, name, fast)"),
], ids=["empty", "cut short", "a list", "fields missing"])
def test_damaged_config_json_is_refused(fresh_run, capsys, content, problem):
    out, config = fresh_run
    (out / "config.json").write_bytes(content)
    files = snapshot(out)
    for argv in (["run", config, "--out", out, "--resume"], ["report", out]):
        line = stderr_line(capsys, argv, 1)
        assert line.startswith(f"error: {out / 'config.json'} is damaged {problem}")
        assert snapshot(out) == files


def test_kill_while_writing_config_json_leaves_no_damaged_file(tmp_path, config_path):
    """``config.json`` is written atomically: killed half-way, the folder has none, and the
    same command then simply runs."""
    out = tmp_path / "out"
    argv = ["run", config_path, "--out", out, "--quiet"]
    killed = cli_process(argv, env={"SFN_TEACH_KILL_AT": "config-write:1"})
    assert killed.returncode == -9, killed.stderr
    assert not (out / "config.json").exists() and (out / ".config.json.tmp").exists()
    again = cli_process(argv)
    assert again.returncode == 0 and again.stderr == ""
    assert json.loads((out / "config.json").read_text())["config"] == SMALL


def test_quiet_resume_still_warns_about_a_corrupt_checkpoint(fresh_run, capsys):
    out, config = fresh_run
    checkpoint = out / RUN / "checkpoint.pt"
    checkpoint.write_bytes(checkpoint.read_bytes()[:1000])  # truncated
    records_path = out / RUN / "records.jsonl"
    before, lines = records_of(out), read_lines(records_path)
    assert main(["run", str(config), "--out", str(out), "--resume", "--quiet"]) == 0
    captured = capsys.readouterr()
    line = only_line(captured.err, prefix="warning: ")
    assert f"checkpoint {checkpoint} is corrupt" in line and "previous checkpoint" in line
    assert captured.out == ""
    assert read_lines(records_path)[:6] == lines[:6]
    assert without_timing(records_of(out)) == without_timing(before)
