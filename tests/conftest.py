"""Shared test set-up: sfn-teach's CPU wait policy before torch starts (inherited by every
subprocess and notebook kernel the tests start), one thread in this process (timing on a shared
2-core machine is noisy otherwise) and a ``float64`` marker for modules whose references are
exact float64 computations."""

import sfn_teach.cpu  # noqa: F401  (first: it must act before torch's OpenMP runtime starts)

import pytest
import torch

torch.set_num_threads(1)


def pytest_addoption(parser):
    parser.addoption("--unsafe-channels-last", action="store_true",
                     help="tests/test_native_crashes.py: store models channels-last on the CPU "
                     "in its subprocesses (the path that crashes oneDNN's AVX2 kernels)")


def pytest_configure(config):
    config.addinivalue_line(
        "markers", "float64: run with torch's default dtype set to float64, restored afterwards"
    )


@pytest.fixture(autouse=True)
def _default_dtype(request):
    """Set float64 as the default dtype for tests marked ``float64``; always restore it."""
    previous = torch.get_default_dtype()
    if request.node.get_closest_marker("float64"):
        torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(previous)
