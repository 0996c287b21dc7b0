"""Native crashes on the CPU path are failing tests that name the case, never a suite abort.

Some failures kill the Python process instead of raising: torch 2.13's CPU build, with
oneDNN's AVX2 convolution kernels (those of CPUs without AVX-512; ``ONEDNN_MAX_CPU_ISA=AVX2``
selects them on any x86-64 CPU), corrupts the heap when it computes the weight gradient of a
1×1 convolution with stride 2 and 2–6 input channels on a channels-last input. That is the
shortcut of the first down-sampling block of a width-4 ResNet-18; the process dies with
``double free or corruption``, ``free(): invalid size``, SIGSEGV or SIGBUS, or hangs with two
threads. Inside pytest such a crash would take the whole suite down, so every case here runs
in a subprocess, and a signal or a hang becomes a test failure that names the case.

The package's answer is :func:`sfn_teach.device.memory_format`: channels-last on CUDA only.
``pytest tests/test_native_crashes.py --unsafe-channels-last`` lets the subprocesses store
models channels-last on the CPU as well; the shipped configs' cases then fail, naming the
config and the signal.
"""

import os
import platform
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from sfn_teach.bench.config import read_config

ROOT = Path(__file__).resolve().parent.parent
CONFIGS = sorted((ROOT / "benchmarks").glob("*.toml"))
TIMEOUT_S = 240

#: Put in front of a case's code: lets channels-last through on the CPU (the unsafe path).
UNSAFE_PRELUDE = ("import sfn_teach.device\n"
                  "sfn_teach.device.CHANNELS_LAST_DEVICE_TYPES += ('cpu',)\n")


def _has_avx2() -> bool:
    try:
        return platform.machine() in ("x86_64", "AMD64") and " avx2" in Path(
            "/proc/cpuinfo").read_text()
    except OSError:
        return False


#: The kernels each case runs under: the CPU's own, and oneDNN's AVX2 ones where the CPU has them.
KERNELS = {"native": {}, **({"avx2": {"ONEDNN_MAX_CPU_ISA": "AVX2"}} if _has_avx2() else {})}


def run_isolated(case: str, code: str, args=(), env=None, timeout=TIMEOUT_S):
    """Run ``python -c code args…`` in a subprocess; return its CompletedProcess.

    Fails the calling test, naming ``case``, if the process dies of a signal or outlives
    ``timeout`` seconds; the test then checks the return code and output itself.
    """
    environment = {**os.environ, "PYTHONPATH": str(ROOT), **(env or {})}
    try:
        done = subprocess.run([sys.executable, "-c", code, *args], cwd=ROOT, env=environment,
                              capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired as expired:
        pytest.fail(f"{case}: hung (killed after {timeout} s); stderr ends:\n"
                    f"{_tail(expired.stderr)}", pytrace=False)
    if done.returncode < 0:
        name = signal.Signals(-done.returncode).name
        pytest.fail(f"{case}: the process died of {name}; stderr ends:\n{_tail(done.stderr)}",
                    pytrace=False)
    return done


def _tail(text, lines=8):
    if isinstance(text, bytes):
        text = text.decode(errors="replace")
    return "\n".join((text or "").strip().splitlines()[-lines:])


@pytest.fixture
def unsafe(request):
    """The prelude that forces channels-last on the CPU, if ``--unsafe-channels-last``."""
    return UNSAFE_PRELUDE if request.config.getoption("--unsafe-channels-last") else ""


# --------------------------------------------------------------------------------------------
# The harness itself
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("code, name", [
    ("import os; os.abort()", "SIGABRT"),
    ("import ctypes; ctypes.string_at(0)", "SIGSEGV"),
])
def test_a_native_crash_is_a_failure_that_names_the_case(code, name):
    with pytest.raises(pytest.fail.Exception, match=rf"^deliberate: the process died of {name}"):
        run_isolated("deliberate", code)


def test_a_hang_is_a_failure_that_names_the_case():
    with pytest.raises(pytest.fail.Exception, match=r"^sleeper: hung \(killed after 1 s\)"):
        run_isolated("sleeper", "import time; time.sleep(60)", timeout=1)


# --------------------------------------------------------------------------------------------
# The smallest reproduction
# --------------------------------------------------------------------------------------------

SMALLEST = textwrap.dedent("""
    import sys, torch
    from sfn_teach.device import memory_format
    torch.set_num_threads(1)
    weight = torch.randn(8, 4, 1, 1, requires_grad=True)         # 4 -> 8 channels, 1x1
    layout = memory_format(torch.device("cpu"), channels_last=True)
    inputs = torch.randn(2, 4, 16, 16).contiguous(memory_format=layout)
    for _ in range(5):
        outputs = torch.nn.functional.conv2d(inputs, weight, stride=2)
        torch.autograd.grad(outputs.sum(), [weight])               # the weight gradient
    print("channels_last" if inputs.is_contiguous(memory_format=torch.channels_last)
          else "contiguous")
""")


@pytest.mark.parametrize("kernels", KERNELS)
def test_smallest_reproduction_runs_in_the_layout_the_package_chooses(kernels, unsafe):
    done = run_isolated(f"strided 1x1 conv weight gradient, {kernels} kernels",
                        unsafe + SMALLEST, env=KERNELS[kernels])
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["channels_last" if unsafe else "contiguous"]


@pytest.mark.skipif("avx2" not in KERNELS, reason="needs an x86-64 CPU with AVX2")
def test_smallest_reproduction_crashes_in_channels_last_with_avx2_kernels():
    """The control: the layout the policy avoids does crash (with this torch) — otherwise the
    policy could be relaxed, and this test says so."""
    with pytest.raises(pytest.fail.Exception, match="died of|hung") as failure:
        run_isolated("forced channels-last", UNSAFE_PRELUDE + SMALLEST, env=KERNELS["avx2"],
                     timeout=60)
    assert "strided 1x1" not in str(failure.value)


# --------------------------------------------------------------------------------------------
# Every shipped config's path, at smoke sizes
# --------------------------------------------------------------------------------------------

CLI = "import sys\nfrom sfn_teach.bench.__main__ import main\nsys.exit(main(sys.argv[1:]))\n"


def smoke_sizes(config_path: Path, data_dir: Path) -> list[str]:
    """``--set`` arguments that shrink a config to seconds on a CPU, keeping its optimisers,
    model type, augmentation and precision: ResNet-18 of width 4 on a generated archive of
    300 + 100 CIFAR-10 images, batch 30, the config's ``[fast]`` budget."""
    raw = read_config(config_path)
    sets = ["device=cpu"]
    if raw["model"]["type"] == "resnet18":
        sets += ["model.width=4", "train.batch_size=30", "train.eval_batch_size=100"]
        sets += [f"optimizers[{i}].batch_size=30" for i, spec in enumerate(raw["optimizers"])
                 if "batch_size" in spec]
    if raw["task"] == "cifar10":
        sets += ["data.generated=true", "data.num_train=300", "data.num_test=100",
                 f"data.dir={data_dir}"]
    return [argument for field in sets for argument in ("--set", field)]


@pytest.mark.slow
@pytest.mark.parametrize("kernels", KERNELS)
@pytest.mark.parametrize("config", CONFIGS, ids=lambda path: path.stem)
def test_every_shipped_config_trains_in_a_subprocess(config, kernels, unsafe, tmp_path,
                                                     tmp_path_factory):
    if kernels != "native" and read_config(config)["model"]["type"] != "resnet18":
        pytest.skip("no convolutions: oneDNN's kernels play no part")
    data_dir = tmp_path_factory.getbasetemp() / "cifar10"  # one generated archive for all
    args = ["run", str(config), "--fast", "--quiet", "--threads", "1",
            "--out", str(tmp_path / "run"), *smoke_sizes(config, data_dir)]
    done = run_isolated(f"{config.name}, {kernels} kernels", unsafe + CLI, args,
                        env=KERNELS[kernels])
    assert done.returncode == 0, f"{config.name}: exit {done.returncode}\n{_tail(done.stderr)}"
    assert (tmp_path / "run" / "summary.md").exists()
