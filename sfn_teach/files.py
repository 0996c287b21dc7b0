"""Files that must be right or absent: SHA-256 checksums and atomic writes.

Used by the data modules (:mod:`sfn_teach.data`, :mod:`sfn_teach.cifar10`,
:mod:`sfn_teach.cifar10_generated`); checkpoints, which also survive a kill in the middle of a
write, have their own writer (:func:`sfn_teach.checkpoint.write_atomically`).
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

__all__ = ["CHUNK", "atomic_write", "sha256_file"]

CHUNK = 1 << 20
"""Bytes read at a time (1 MiB)."""


def sha256_file(path) -> str:
    """The SHA-256 of the file at ``path`` as 64 lowercase hex digits (read in 1 MiB chunks)."""
    digest = hashlib.sha256()
    with open(path, "rb") as file:
        while chunk := file.read(CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def atomic_write(path, write):
    """Call ``write(file)`` on ``<path>.tmp``, then rename it to ``path``.

    Readers see the old file, or the complete new one; on any error the temporary file is
    removed and the error re-raised.
    """
    path = Path(path)
    temporary = path.with_name(path.name + ".tmp")
    try:
        with open(temporary, "wb") as file:
            write(file)
            file.flush()
            os.fsync(file.fileno())
        os.replace(temporary, path)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise
