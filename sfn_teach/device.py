"""Where and in which precision a training step runs, and how long it takes there.

**Devices.** :func:`resolve_device` turns ``"auto"`` into CUDA when a GPU is present, else the
CPU. :func:`configure_backends` switches on ``torch.backends.cudnn.benchmark`` for a CUDA
device (cuDNN times its convolution algorithms on the first call of each shape and keeps the
fastest: the first steps of a run are slower, see *warm-up* in :mod:`sfn_teach.train`).

**Precision policy** (:class:`Precision`). Parameters, optimiser state, the series and every
update are float32 (or the model's dtype) in every setting; what changes is the arithmetic of
the forward pass and of the products computed through its graph.

- *First-order steps* (``torch.optim``): with ``autocast = "bf16"`` the forward pass runs
  under :func:`torch.autocast` in bfloat16 and the backward pass follows the forward's dtypes
  (the usual mixed precision; no loss scaling is needed for bf16). ``tf32`` lets float32
  convolutions and matrix products use TF32 tensor cores.
- *Curvature steps* (:class:`~sfn_teach.optim.CurvatureOptimizer`: SeriesSFN, exact SFN,
  Newton): the gradient and the ``2(K−1)`` Hessian-vector products are taken on **one** graph
  (the default double-backward backend differentiates the gradient's own graph), so whatever
  precision the forward pass has, every product inherits it. By default the whole curvature
  step — forward, gradient, every HVP and the Levenberg–Marquardt re-evaluation — therefore
  runs in float32, *even when* ``autocast = "bf16"``; only ``hvp = "bf16"`` (which requires
  ``autocast = "bf16"``) runs the curvature step's forward under bf16 autocast too. TF32 is
  off for curvature steps unless ``hvp_tf32``.
- *Evaluation* (the records' losses and accuracies) always runs in float32 with TF32 off, so
  that every optimiser is measured with the same instrument.

TF32 is a process-wide switch of CUDA (``torch.backends.cuda.matmul.allow_tf32`` and
``torch.backends.cudnn.allow_tf32``; note that PyTorch's own default allows TF32 in cuDNN
convolutions): :func:`tf32` sets both for the duration of a block and restores them. On a CPU
both flags have no effect and bf16 autocast runs as asked (slowly, unless the CPU has bf16
units).

**Memory format** (:func:`memory_format`). ``channels_last`` (NHWC) storage is used only on
CUDA devices, where cuDNN's convolutions prefer it; on a CPU a model is always stored
contiguously (NCHW), whatever a config asks. Two measured reasons: with torch 2.13's CPU build,
oneDNN's AVX2 convolution kernels (those of CPUs without AVX-512, and of any CPU with
``ONEDNN_MAX_CPU_ISA=AVX2``) corrupt the heap when they compute the weight gradient of a
strided 1×1 convolution (a ResNet shortcut) in channels-last format — the process dies with
``double free or corruption`` in the first backward pass, plain or double;
``tests/test_native_crashes.py`` keeps the smallest reproduction. And it does not reliably pay on
a CPU: the width-8 ResNet-18 of the tests ran its gradient and HVP many times slower in it.

**Timing** (:func:`timed`): on a GPU with CUDA events recorded around the call, on a CPU with
``time.perf_counter``; either way the call is complete when the time is read.
"""

from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass

import torch

from .checks import ArgumentError, choice, flag

__all__ = [
    "AUTOCAST_DTYPES", "CHANNELS_LAST_DEVICE_TYPES", "HVP_PRECISIONS", "Precision", "autocast",
    "configure_backends", "memory_format", "resolve_device", "tf32", "timed"
]

AUTOCAST_DTYPES = {"none": None, "bf16": torch.bfloat16}
"""``precision.autocast`` values and the dtype :func:`torch.autocast` uses for each."""
HVP_PRECISIONS = ("fp32", "bf16")


def resolve_device(name) -> torch.device:
    """``torch.device(name)``, where ``"auto"`` is ``"cuda"`` if a GPU is available, else ``"cpu"``.

    Raises ``ValueError`` for a name torch does not know and for a CUDA device that is not
    available.
    """
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except (RuntimeError, TypeError):
        raise ArgumentError("device", f"must be 'auto', 'cpu', 'cuda' or 'cuda:N', "
                                      f"got {name!r}") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ArgumentError("device", f"is {name!r}, but no CUDA device is available")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise ArgumentError("device", f"is {name!r}, but there are only "
                                          f"{torch.cuda.device_count()} CUDA devices")
    elif device.type != "cpu":
        raise ArgumentError("device", f"must be 'auto', 'cpu', 'cuda' or 'cuda:N', got {name!r}")
    return device


CHANNELS_LAST_DEVICE_TYPES = ("cuda",)
"""Device types on which :func:`memory_format` lets a model be stored channels-last."""


def memory_format(device: torch.device, channels_last: bool) -> torch.memory_format:
    """The memory format to store a model in on ``device`` when ``channels_last`` is asked for.

    ``torch.channels_last`` if asked for and ``device.type`` is in
    :data:`CHANNELS_LAST_DEVICE_TYPES` (CUDA), else ``torch.contiguous_format`` (module
    docstring: on a CPU channels-last crashes oneDNN's AVX2 kernels and does not pay).
    """
    if channels_last and torch.device(device).type in CHANNELS_LAST_DEVICE_TYPES:
        return torch.channels_last
    return torch.contiguous_format


def configure_backends(device: torch.device) -> None:
    """On a CUDA device, let cuDNN pick the fastest convolution algorithm per shape."""
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True


@contextlib.contextmanager
def tf32(allowed: bool):
    """Allow (or forbid) TF32 in CUDA matrix products and cuDNN convolutions inside the block.

    Sets ``torch.backends.cuda.matmul.allow_tf32`` and ``torch.backends.cudnn.allow_tf32`` and
    restores both on exit.
    """
    saved = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = allowed
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


def autocast(device: torch.device, dtype):
    """``torch.autocast(device.type, dtype)``; a block that changes nothing if ``dtype`` is None."""
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype)


@dataclass(frozen=True)
class Precision:
    """The precision policy of a run (see the module docstring for what runs in which).

    Args:
        autocast: ``"none"`` or ``"bf16"``: bf16 autocast for the forward pass of first-order
            steps.
        hvp: ``"fp32"`` or ``"bf16"``: the forward pass of curvature steps, and with it the
            gradient and every Hessian-vector product; ``"bf16"`` requires ``autocast="bf16"``.
        tf32: TF32 for first-order steps.
        hvp_tf32: TF32 for curvature steps.
    """

    autocast: str = "none"
    hvp: str = "fp32"
    tf32: bool = False
    hvp_tf32: bool = False

    def __post_init__(self):
        choice("autocast", self.autocast, AUTOCAST_DTYPES)
        choice("hvp", self.hvp, HVP_PRECISIONS)
        if self.hvp == "bf16" and self.autocast != "bf16":
            raise ArgumentError("hvp", "= 'bf16' runs curvature steps under bf16 autocast, so it "
                                f"needs autocast = 'bf16', got autocast = {self.autocast!r}")
        flag("tf32", self.tf32)
        flag("hvp_tf32", self.hvp_tf32)

    def step(self, curvature: bool):
        """``(autocast dtype or None, TF32 allowed)`` of a first-order or a curvature step."""
        if curvature:
            return AUTOCAST_DTYPES[self.hvp if self.hvp == "bf16" else "none"], self.hvp_tf32
        return AUTOCAST_DTYPES[self.autocast], self.tf32

    def describe(self, device: torch.device) -> str:
        """One line saying what runs in which precision on ``device``."""
        def arithmetic(dtype, allow_tf32):
            if dtype is not None:
                return "bf16 autocast"
            return "fp32 with TF32" if allow_tf32 and device.type == "cuda" else "fp32"

        return (f"first-order steps: {arithmetic(*self.step(False))}; curvature steps "
                f"(gradient, HVPs, re-evaluation): {arithmetic(*self.step(True))}; "
                "evaluation: fp32")


def timed(fn, device: torch.device):
    """``(fn(), seconds)``: the call timed by CUDA events on a GPU, ``perf_counter`` elsewhere.

    On a GPU the queue is drained first, so that only this call's kernels lie between the two
    events; the time is read once the end event has completed.
    """
    if device.type == "cuda":
        with torch.cuda.device(device):
            torch.cuda.synchronize()
            start = torch.cuda.Event(enable_timing=True)
            end = torch.cuda.Event(enable_timing=True)
            start.record()
            result = fn()
            end.record()
            end.synchronize()
        return result, start.elapsed_time(end) / 1e3
    start = time.perf_counter()
    result = fn()
    return result, time.perf_counter() - start
