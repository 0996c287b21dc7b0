"""Checkpoints that survive a kill at any moment, and the random-number state they carry.

**File format.** A checkpoint is ``torch.save``'s bytes followed by their 32-byte SHA-256
digest. It is loaded only after the digest matches, and then with ``torch.load(...,
weights_only=True)``, so it may hold only tensors, numbers, strings, ``None`` and lists,
tuples and dicts of those (no pickled objects, nothing executed on load). A truncated or
damaged file fails the digest and raises :class:`CheckpointError`; it is never used.

**Atomic writes.** :func:`write_atomically` writes to a temporary file in the same folder,
flushes and ``fsync``\\ s it, renames it into place with :func:`os.replace` (atomic on POSIX),
then ``fsync``\\ s the folder: killed at any moment, it leaves the old file or the new one,
never a part of one. :func:`save_checkpoint` writes with it and first moves the previous
checkpoint to ``<name>.prev``, so that (between the two renames) the folder may hold only
``<name>.prev``: :func:`load_latest_checkpoint` takes the newest good one of the two and says
when it had to fall back.

**Random state.** :func:`rng_state` captures the generators of torch (CPU, and CUDA where it is
in use), NumPy's legacy global generator and Python's :mod:`random` as tensors and numbers, and
:func:`set_rng_state` restores them.

**Fault injection for tests.** With ``SFN_TEACH_KILL_AT=NAME:N`` in the environment, the
process sends itself SIGKILL the ``N``-th time it reaches :func:`fault_point` ``(NAME)``;
:func:`write_atomically` has the point its caller names half-way through the temporary file
(``"checkpoint-write"`` for :func:`save_checkpoint`).
"""

from __future__ import annotations

import hashlib
import io
import os
import random
import signal
from pathlib import Path

import numpy as np
import torch

from .checks import SfnTeachError

__all__ = [
    "DIGEST_SIZE", "CheckpointError", "fault_point", "fsync_directory", "load_checkpoint",
    "load_latest_checkpoint", "previous_path", "rng_state", "save_checkpoint", "set_rng_state",
    "write_atomically"
]

DIGEST_SIZE = 32  # bytes of SHA-256
_fault_counts: dict[str, int] = {}


class CheckpointError(SfnTeachError, RuntimeError):
    """A checkpoint file is missing, truncated, damaged or not loadable with weights_only."""


def fault_point(name: str) -> None:
    """SIGKILL this process here if ``SFN_TEACH_KILL_AT`` is ``"name:N"`` and this is visit N."""
    target, _, count = os.environ.get("SFN_TEACH_KILL_AT", "").partition(":")
    if target != name:
        return
    _fault_counts[name] = _fault_counts.get(name, 0) + 1
    if _fault_counts[name] == int(count or 1):
        os.kill(os.getpid(), signal.SIGKILL)


def fsync_directory(directory) -> None:
    """Make renames and new files in ``directory`` durable (a no-op where unsupported)."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def previous_path(path) -> Path:
    """Where :func:`save_checkpoint` keeps the checkpoint before the newest: ``<path>.prev``."""
    path = Path(path)
    return path.with_name(path.name + ".prev")


def write_atomically(path, data: bytes, fault_name: str, keep_previous: bool = False) -> None:
    """Replace the file ``path`` by ``data`` so that a kill at any moment leaves either file.

    ``data`` goes to the temporary file ``.<name>.tmp`` in the same folder, which is flushed,
    ``fsync``\\ ed and renamed to ``path``; then the folder is ``fsync``\\ ed. With
    ``keep_previous`` the file that was at ``path`` is first renamed to ``<path>.prev``.
    Half-way through the temporary file lies the fault point ``fault_name``
    (:func:`fault_point`).
    """
    path = Path(path)
    temporary = path.with_name(f".{path.name}.tmp")
    with open(temporary, "wb") as f:
        f.write(data[: len(data) // 2])
        f.flush()
        fault_point(fault_name)
        f.write(data[len(data) // 2 :])
        f.flush()
        os.fsync(f.fileno())
    if keep_previous and path.exists():
        os.replace(path, previous_path(path))
    os.replace(temporary, path)
    fsync_directory(path.parent)


def save_checkpoint(obj, path) -> None:
    """Write ``obj`` (tensors, numbers, strings, containers) to ``path`` atomically.

    The bytes are ``torch.save(obj)`` plus their SHA-256; the former checkpoint, if any,
    becomes ``<path>.prev``. The fault point is ``"checkpoint-write"``.
    """
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    payload = buffer.getvalue()
    write_atomically(path, payload + hashlib.sha256(payload).digest(), "checkpoint-write",
                     keep_previous=True)


def load_checkpoint(path, map_location="cpu"):
    """Read a checkpoint written by :func:`save_checkpoint`, after verifying its digest."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as error:
        raise CheckpointError(f"cannot read checkpoint {path}: {error}") from error
    payload, digest = data[:-DIGEST_SIZE], data[-DIGEST_SIZE:]
    if len(data) <= DIGEST_SIZE or hashlib.sha256(payload).digest() != digest:
        raise CheckpointError(
            f"checkpoint {path} is corrupt: its SHA-256 does not match ({len(data)} bytes, "
            "truncated or damaged)"
        )
    try:
        return torch.load(io.BytesIO(payload), map_location=map_location, weights_only=True)
    except Exception as error:  # a digest-valid file that torch cannot read: say what it is
        raise CheckpointError(f"checkpoint {path} cannot be loaded: {error}") from error


def load_latest_checkpoint(path, map_location="cpu", check=None):
    """The newest good checkpoint at ``path`` or ``<path>.prev``: ``(obj, path_used, notes)``.

    A checkpoint is good when its digest matches and it loads, and then, if ``check`` is
    given, when ``check(obj)`` does not raise :class:`CheckpointError` (a caller's test that
    the checkpoint agrees with the files around it). ``notes`` lists what was wrong with a
    newer file that was skipped (empty when ``path`` itself was good). Returns
    ``(None, None, notes)`` when neither file exists; raises :class:`CheckpointError` when a
    checkpoint exists but none is good.
    """
    notes, found = [], False
    for candidate in (Path(path), previous_path(path)):
        if not candidate.exists():
            continue
        found = True
        try:
            obj = load_checkpoint(candidate, map_location)
        except CheckpointError as error:
            notes.append(str(error))
            continue
        try:
            if check is not None:
                check(obj)
        except CheckpointError as error:
            notes.append(f"checkpoint {candidate} cannot be used: {error}")
            continue
        return obj, candidate, notes
    if found:
        raise CheckpointError("; ".join(notes) + "; no good checkpoint is left")
    return None, None, notes


# --------------------------------------------------------------------------------------------
# Random-number state
# --------------------------------------------------------------------------------------------


def rng_state() -> dict:
    """The state of every global generator, as tensors and numbers (weights_only-safe)."""
    kind, key, position, has_gauss, cached_gaussian = np.random.get_state()  # noqa: NPY002
    version, internal, gauss = random.getstate()
    state = {
        "torch": torch.get_rng_state(),
        "numpy": {
            "kind": kind,
            "key": torch.from_numpy(key.astype(np.int64)),
            "position": int(position),
            "has_gauss": int(has_gauss),
            "cached_gaussian": float(cached_gaussian),
        },
        "python": {"version": version, "internal": torch.tensor(internal), "gauss": gauss},
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    """Restore the generators captured by :func:`rng_state`."""
    torch.set_rng_state(state["torch"])
    numpy = state["numpy"]
    np.random.set_state((  # noqa: NPY002 (the legacy global generator is what we restore)
        numpy["kind"], numpy["key"].numpy().astype(np.uint32), numpy["position"],
        numpy["has_gauss"], numpy["cached_gaussian"],
    ))
    python = state["python"]
    random.setstate((python["version"], tuple(python["internal"].tolist()), python["gauss"]))
    if "cuda" in state:
        torch.cuda.set_rng_state_all(state["cuda"])
