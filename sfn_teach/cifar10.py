"""CIFAR-10 from its authors' binary distribution: download, verify, parse, cache.

**The archive.** ``cifar-10-binary.tar.gz`` (Krizhevsky 2009) holds, under
``cifar-10-batches-bin/``, five training files ``data_batch_1.bin … data_batch_5.bin`` and
``test_batch.bin``, each 10,000 fixed-length records of ``1 + 3072`` bytes: the label (0–9),
then the 32×32 image channel-major (1024 red, 1024 green, 1024 blue bytes, each row-major),
plus ``batches.meta.txt`` (class names) and ``readme.html``. No pickle is involved anywhere:
records are parsed with :func:`numpy.frombuffer`, the cache is a plain ``.npz`` of integer
arrays loaded with ``allow_pickle=False``.

**What the download guarantees.** :func:`download_cifar10` streams the archive into
``<name>.part`` (resuming a partial file with an HTTP ``Range`` request, restarting where a
server ignores it), then checks its size and SHA-256 *before anything is read from it*, and
only then renames it into place. A file that fails the check is moved aside to ``<name>.bad``
(replacing an older one) and the error names it, so a re-run starts afresh.
:func:`read_cifar10_archive` reads the six data members with :mod:`tarfile` in streaming mode,
never extracting anything to disk, and refuses path traversal, links, unexpected, duplicate,
missing or wrongly sized members and labels outside 0–9. :func:`load_cifar10` caches the parsed
arrays next to the archive, written to a temporary file and renamed, so that a failure at any
point leaves either the complete cache or none.

**Where files go.** ``data_dir`` if given; else ``$SFN_TEACH_DATA_DIR/cifar10``; else
``data/cifar10`` in the repository (git-ignored). The archive comes from ``url`` if given; else
``$SFN_TEACH_CIFAR10_URL``; else the authors' site. A URL may be ``http(s)://``, ``file://`` or a
plain local path, for mirrors and offline copies.

The images as tensors (normalisation, augmentation, the validation split) are in
:mod:`sfn_teach.images`; generated archives in this format, for tests and runs without the
network, in :mod:`sfn_teach.cifar10_generated`.
"""

from __future__ import annotations

import gzip
import os
import posixpath
import re
import tarfile
import urllib.error
import urllib.parse
import urllib.request
import warnings
import zlib
from dataclasses import dataclass, fields
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from .checks import ArgumentError, SfnTeachError, integer
from .files import CHUNK, atomic_write, sha256_file
from .images import (
    CLASSES,
    IMAGE_SHAPE,
    synthetic_cifar_batch,
)

__all__ = [
    "ARCHIVE_NAME", "CACHE_NAME", "CIFAR10_BINARY", "CLASSES", "IGNORED_MEMBERS", "IMAGE_BYTES",
    "IMAGE_SHAPE", "MEMBER_DIR", "RECORD_BYTES", "TEST_MEMBER", "TRAIN_MEMBERS", "URL",
    "ArchiveSpec", "CIFAR10Arrays", "CIFAR10Error", "check_counts", "cifar10_dir",
    "download_cifar10", "load_cifar10", "read_cifar10_archive", "sha256_file",
    "synthetic_cifar_batch"
]

URL = "https://www.cs.toronto.edu/~kriz/cifar-10-binary.tar.gz"
ARCHIVE_NAME = "cifar-10-binary.tar.gz"
CACHE_NAME = "cifar10-uint8.npz"
MEMBER_DIR = "cifar-10-batches-bin"
TRAIN_MEMBERS = tuple(f"{MEMBER_DIR}/data_batch_{i}.bin" for i in range(1, 6))
TEST_MEMBER = f"{MEMBER_DIR}/test_batch.bin"
IGNORED_MEMBERS = (f"{MEMBER_DIR}/batches.meta.txt", f"{MEMBER_DIR}/readme.html")
IMAGE_BYTES = 3 * 32 * 32
RECORD_BYTES = 1 + IMAGE_BYTES  # a label byte, then the image

_CHECK_URL = "Check the URL or mirror (the url argument or SFN_TEACH_CIFAR10_URL)."
_RETRY = "Run again to download afresh, or use another mirror (the url argument or " \
    "SFN_TEACH_CIFAR10_URL)."


class CIFAR10Error(SfnTeachError, RuntimeError):
    """A CIFAR-10 file is missing, corrupt, truncated or not the expected one."""


def check_counts(num_train, num_test):
    """Validate image counts: positive, and ``num_train`` split evenly over five files."""
    integer("num_train", num_train, 1)
    integer("num_test", num_test, 1)
    if num_train % len(TRAIN_MEMBERS):
        raise ArgumentError("num_train", f"must be a multiple of {len(TRAIN_MEMBERS)} (one fifth "
                                         f"per data_batch file), got {num_train}")


@dataclass(frozen=True)
class ArchiveSpec:
    """What the archive must be: its ``size`` in bytes, ``sha256`` and number of images.

    The training images are split evenly over the five ``data_batch`` files, so ``num_train``
    must be a multiple of 5. :data:`CIFAR10_BINARY` describes the real archive; generated
    archives (:func:`sfn_teach.cifar10_generated.write_cifar10_archive`) return their own spec.
    """

    sha256: str
    size: int
    num_train: int = 50_000
    num_test: int = 10_000

    def __post_init__(self):
        if not (isinstance(self.sha256, str) and re.fullmatch("[0-9a-f]{64}", self.sha256)):
            raise ArgumentError("sha256", f"must be 64 lowercase hex digits, got {self.sha256!r}")
        integer("size", self.size, 1)
        check_counts(self.num_train, self.num_test)

    @classmethod
    def of_file(cls, path, num_train=50_000, num_test=10_000):
        """The spec of the file at ``path`` as it is now (its size and SHA-256)."""
        path = Path(path)
        return cls(sha256_file(path), path.stat().st_size, num_train, num_test)


CIFAR10_BINARY = ArchiveSpec(
    sha256="c4a38c50a1bc5f3a1c5537f2155ab9d68f9f25eb1ed8d9ddda3db29a59bca1dd",
    size=170_052_171,
)  # MD5 c32a1d4ab5d03f1284b67883e8d87530, as published on the authors' page


@dataclass(frozen=True)
class CIFAR10Arrays:
    """The dataset on the CPU: images ``uint8 [N, 3, 32, 32]`` (RGB), labels ``int64 [N]``."""

    train_images: torch.Tensor
    train_labels: torch.Tensor
    test_images: torch.Tensor
    test_labels: torch.Tensor


# --------------------------------------------------------------------------------------------
# Files: where they go and their checks (checksums, atomic writes: sfn_teach.files)
# --------------------------------------------------------------------------------------------


def cifar10_dir(data_dir=None) -> Path:
    """The directory of the archive and its cache.

    ``data_dir`` if given, else ``$SFN_TEACH_DATA_DIR/cifar10``, else ``<repo>/data/cifar10``.
    """
    if data_dir is not None:
        return Path(data_dir)
    root = os.environ.get("SFN_TEACH_DATA_DIR")
    if root:
        return Path(root) / "cifar10"
    return Path(__file__).resolve().parents[1] / "data" / "cifar10"


def _check_file(path, archive, origin, advice):
    """Raise :class:`CIFAR10Error` unless ``path`` has the size and SHA-256 of ``archive``.

    A file that fails is moved aside to ``<archive name>.bad`` (replacing an older one), so
    that the next attempt starts from scratch; the error says where it went, then ``advice``.
    """
    path = Path(path)
    size = path.stat().st_size
    if size != archive.size:
        problem = f"has {size:,} bytes, expected {archive.size:,} (truncated or not this file)"
    elif (digest := sha256_file(path)) != archive.sha256:
        problem = f"has SHA-256 {digest}, expected {archive.sha256} (corrupt or not this file)"
    else:
        return
    bad = path.with_name(ARCHIVE_NAME + ".bad")
    os.replace(path, bad)
    raise CIFAR10Error(
        f"{path.name} from {origin} {problem}. Nothing was extracted; the file was moved aside "
        f"to {bad} (delete it). {advice}"
    )


# --------------------------------------------------------------------------------------------
# Download with resume
# --------------------------------------------------------------------------------------------


def _local_path(url):
    """The local path named by a ``file://`` URL or a plain path; ``None`` for http(s)."""
    parsed = urllib.parse.urlparse(url)
    if parsed.scheme in ("http", "https"):
        return None
    if parsed.scheme == "file":
        return Path(urllib.request.url2pathname(parsed.path))
    return Path(url)


def _open_http(url, offset, timeout):
    """``(stream, start, end)`` for bytes ``[start, end)`` of ``url``.

    Asks for ``bytes=offset-`` when ``offset > 0``; a server that ignores the ``Range`` header
    answers 200 with the whole file, and then ``start = 0``. ``end`` is ``None`` if the server
    does not say how long the body is.
    """
    headers = {"Range": f"bytes={offset}-"} if offset else {}
    response = urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=timeout)
    start = 0
    if offset and response.status == 206:
        content_range = response.headers.get("Content-Range", "")
        start = int(content_range.split()[1].split("-")[0]) if content_range else -1
        if start != offset:
            response.close()
            raise CIFAR10Error(
                f"{url} answered the request for bytes {offset}- with Content-Range "
                f"{content_range!r} (a broken server or mirror)"
            )
    length = response.headers.get("Content-Length")
    return response, start, None if length is None else start + int(length)


def _open_source(url, offset, timeout):
    """``(stream, start, end)``: the source from byte ``offset`` where it can resume, else 0."""
    path = _local_path(url)
    if path is None:
        return _open_http(url, offset, timeout)
    size = path.stat().st_size
    start = offset if offset <= size else 0
    stream = open(path, "rb")
    stream.seek(start)
    return stream, start, size


def _copy(stream, part, start, end, max_size, progress):
    """Write ``stream`` into ``part`` from byte ``start``; raise if it ends before ``end``."""
    with stream, open(part, "r+b" if start else "wb") as out, tqdm(
        total=max_size, initial=start, unit="B", unit_scale=True, unit_divisor=1024,
        desc=ARCHIVE_NAME, disable=not progress,
    ) as bar:
        out.seek(start)
        out.truncate()
        while chunk := stream.read(CHUNK):
            out.write(chunk)
            bar.update(len(chunk))
            if out.tell() > max_size:
                raise CIFAR10Error(
                    f"the download is larger than the expected {max_size:,} bytes (not this file)"
                )
        if end is not None and out.tell() < end:
            raise ConnectionError(f"connection closed after {out.tell():,} of {end:,} bytes")


def _fetch(url, part, archive, progress, max_attempts, timeout):
    """Bring ``part`` to the full archive, resuming after dropped connections."""
    error = None
    for _ in range(max_attempts):
        offset = part.stat().st_size if part.exists() else 0
        if offset >= archive.size:
            return
        try:
            stream, start, end = _open_source(url, offset, timeout)
            _copy(stream, part, start, end, archive.size, progress)
            return
        except urllib.error.HTTPError as http_error:
            if http_error.code != 416:
                raise CIFAR10Error(
                    f"downloading {url} failed: HTTP {http_error.code} {http_error.reason}. "
                    f"{_CHECK_URL}"
                ) from http_error
            part.unlink()  # the server has no bytes past the partial file: start afresh
            error = http_error
        except CIFAR10Error as wrong_file:
            bad = part.with_name(ARCHIVE_NAME + ".bad")
            part.replace(bad)
            raise CIFAR10Error(
                f"{wrong_file}. The partial download was moved aside to {bad} (delete it); "
                f"{_RETRY}"
            ) from wrong_file
        except OSError as os_error:  # connection refused, reset or dropped: resume next time
            error = os_error
    kept = "nothing was received"
    if part.exists() and part.stat().st_size:
        kept = f"{part} keeps the {part.stat().st_size:,} bytes received; run again to resume"
    raise CIFAR10Error(
        f"downloading {url} failed after {max_attempts} attempts ({error}): {kept}. {_CHECK_URL}"
    )


def download_cifar10(
    data_dir=None,
    url=None,
    archive: ArchiveSpec = CIFAR10_BINARY,
    progress: bool = True,
    max_attempts: int = 3,
    timeout: float = 60.0,
) -> Path:
    """Download the binary archive into the data directory, verified; return its path.

    An archive already in place is checked (size, then SHA-256) and returned; one that fails is
    moved aside to ``.bad`` with a warning and downloaded again. Otherwise the bytes stream into
    ``<name>.part`` with a progress bar; a dropped connection is resumed from the end of the
    partial file (up to ``max_attempts`` connections per call, and across calls), and a server
    that ignores ``Range`` is read again from the start. The complete file must have exactly
    ``archive.size`` bytes and SHA-256 ``archive.sha256`` before it is renamed into place;
    otherwise it goes to ``.bad`` and :class:`CIFAR10Error` says so. Nothing is extracted here.

    ``data_dir`` and ``url`` default as described in the module docstring.
    """
    integer("max_attempts", max_attempts, 1)
    directory = cifar10_dir(data_dir)
    directory.mkdir(parents=True, exist_ok=True)
    target = directory / ARCHIVE_NAME
    if target.exists():
        try:
            _check_file(target, archive, "the data directory", "Downloading it again.")
            return target
        except CIFAR10Error as error:
            warnings.warn(str(error), RuntimeWarning, stacklevel=2)
    url = url or os.environ.get("SFN_TEACH_CIFAR10_URL") or URL
    part = directory / (ARCHIVE_NAME + ".part")
    _fetch(url, part, archive, progress, max_attempts, timeout)
    _check_file(part, archive, url, _RETRY)
    os.replace(part, target)
    return target


# --------------------------------------------------------------------------------------------
# Parsing the archive
# --------------------------------------------------------------------------------------------


def _archive_error(path, problem):
    return CIFAR10Error(
        f"{path}: {problem}. This is not the CIFAR-10 binary archive (or it is damaged): "
        "delete it and download again, or check the mirror."
    )


def _member_error(path, name, problem):
    return _archive_error(path, f"member {name!r} {problem}")


def _check_member(path, member, expected_bytes, seen):
    """Raise unless ``member`` is a safe, expected entry; return whether it holds records."""
    name = member.name
    parts = posixpath.normpath(name).split("/")
    if name.startswith("/") or ".." in parts:
        raise _member_error(path, name, "points outside the archive (path traversal)")
    if name in seen:
        raise _member_error(path, name, "appears twice")
    seen.add(name)
    if member.issym() or member.islnk():
        raise _member_error(path, name, f"is a link (to {member.linkname!r})")
    if name == MEMBER_DIR and member.isdir():
        return False
    if name in IGNORED_MEMBERS and member.isfile():
        return False
    if name not in expected_bytes:
        raise _member_error(path, name, "is not one of the expected members")
    if not member.isfile():
        raise _member_error(path, name, "is not a regular file")
    if member.size != expected_bytes[name]:
        raise _member_error(
            path, name,
            f"has {member.size:,} bytes, expected {expected_bytes[name]:,} "
            f"({expected_bytes[name] // RECORD_BYTES:,} records of {RECORD_BYTES} bytes)",
        )
    return True


def _parse_records(path, name, data):
    """``(images uint8 [n, 3, 32, 32], labels int64 [n])`` from a member's raw bytes."""
    records = np.frombuffer(data, dtype=np.uint8).reshape(-1, RECORD_BYTES)
    labels = records[:, 0].astype(np.int64)
    if labels.size and labels.max() >= len(CLASSES):
        first = int(np.argmax(labels >= len(CLASSES)))
        raise _member_error(path, name, f"has label {labels[first]} at record {first} (not 0-9)")
    return records[:, 1:].reshape(-1, *IMAGE_SHAPE), labels


def read_cifar10_archive(path, num_train=50_000, num_test=10_000) -> CIFAR10Arrays:
    """Parse the six data members of a CIFAR-10 binary ``.tar.gz`` into arrays (in memory).

    Streams the archive once (``tarfile`` mode ``r|gz``), in any member order, and never writes
    to disk. Each ``data_batch_i.bin`` must hold exactly ``num_train/5`` records and
    ``test_batch.bin`` ``num_test`` (the real archive: 10,000 each; other counts are accepted
    only when passed explicitly, for generated archives). The directory entry,
    ``batches.meta.txt`` and ``readme.html`` are allowed and skipped; any other member, a
    path that leaves the archive, a link, a duplicate, a wrong size, a missing member or a
    label outside 0–9 raises :class:`CIFAR10Error` naming the file and member.
    Does not check the archive's checksum: :func:`download_cifar10` does that first.
    """
    path = Path(path)
    check_counts(num_train, num_test)
    per_file = num_train // len(TRAIN_MEMBERS)
    expected_bytes = {name: per_file * RECORD_BYTES for name in TRAIN_MEMBERS}
    expected_bytes[TEST_MEMBER] = num_test * RECORD_BYTES
    parsed, seen = {}, set()
    try:
        with tarfile.open(path, mode="r|gz") as tar:
            for member in tar:
                if _check_member(path, member, expected_bytes, seen):
                    data = tar.extractfile(member).read()
                    parsed[member.name] = _parse_records(path, member.name, data)
    except (tarfile.TarError, EOFError, zlib.error, gzip.BadGzipFile) as error:
        problem = f"not a readable .tar.gz ({type(error).__name__}: {error})"
        raise _archive_error(path, problem) from error
    missing = [name for name in expected_bytes if name not in parsed]
    if missing:
        raise _archive_error(path, f"the members {missing} are missing")
    train = [parsed[name] for name in TRAIN_MEMBERS]
    return CIFAR10Arrays(
        torch.from_numpy(np.concatenate([images for images, _ in train])),
        torch.from_numpy(np.concatenate([labels for _, labels in train])),
        torch.from_numpy(parsed[TEST_MEMBER][0].copy()),
        torch.from_numpy(parsed[TEST_MEMBER][1]),
    )


# --------------------------------------------------------------------------------------------
# The cache and the public loader
# --------------------------------------------------------------------------------------------


def _write_cache(path, arrays, archive):
    """Save ``arrays`` and the archive's SHA-256 as an uncompressed ``.npz``, atomically."""
    contents = {field.name: getattr(arrays, field.name).numpy() for field in fields(arrays)}
    atomic_write(path, lambda file: np.savez(file, source_sha256=archive.sha256, **contents))


def _read_cache(path, archive):
    """The cached arrays if ``path`` holds a valid cache of ``archive``, else ``None``.

    A cache of another archive is ignored (it will be overwritten); an unreadable one is
    deleted with a warning (it is rebuilt from the verified archive).
    """
    if not path.exists():
        return None
    expected = {
        "train_images": (np.uint8, (archive.num_train, *IMAGE_SHAPE)),
        "train_labels": (np.int64, (archive.num_train,)),
        "test_images": (np.uint8, (archive.num_test, *IMAGE_SHAPE)),
        "test_labels": (np.int64, (archive.num_test,)),
    }
    try:
        with np.load(path, allow_pickle=False) as cache:
            if str(cache["source_sha256"]) != archive.sha256:
                return None
            arrays = {name: cache[name] for name in expected}
        for name, (dtype, shape) in expected.items():
            if arrays[name].dtype != dtype or arrays[name].shape != shape:
                raise ValueError(f"{name} is {arrays[name].dtype} {arrays[name].shape}")
    except Exception as error:  # any damage to a derived file: rebuild it
        path.unlink()
        warnings.warn(
            f"deleted the unreadable cache {path} ({error}); rebuilding it from the archive",
            RuntimeWarning, stacklevel=3,
        )
        return None
    return CIFAR10Arrays(**{name: torch.from_numpy(value) for name, value in arrays.items()})


def load_cifar10(
    data_dir=None,
    download: bool = True,
    url=None,
    archive: ArchiveSpec = CIFAR10_BINARY,
    progress: bool = True,
) -> CIFAR10Arrays:
    """CIFAR-10 as :class:`CIFAR10Arrays` on the CPU, parsed from the archive once and cached.

    Returns the cache ``cifar10-uint8.npz`` when it was built from an archive with
    ``archive.sha256``. Otherwise takes the archive in the data directory, downloading it with
    :func:`download_cifar10` if ``download`` (which verifies it) or verifying it in place if
    not, parses it with :func:`read_cifar10_archive` and writes the cache atomically. On any
    error no cache is left behind and :class:`CIFAR10Error` names the file and what to do.
    Images are ``uint8 [N, 3, 32, 32]`` in RGB order; labels ``int64`` in 0–9.
    """
    directory = cifar10_dir(data_dir)
    cache = directory / CACHE_NAME
    arrays = _read_cache(cache, archive)
    if arrays is not None:
        return arrays
    path = directory / ARCHIVE_NAME
    if download:
        path = download_cifar10(directory, url, archive, progress)
    elif path.exists():
        _check_file(path, archive, "the data directory",
                    f"Load with download=True, or put a good copy of {ARCHIVE_NAME} there.")
    else:
        raise CIFAR10Error(
            f"{path} does not exist: call with download=True, put a copy of {ARCHIVE_NAME} "
            "there, or point SFN_TEACH_CIFAR10_URL at a mirror or local copy"
        )
    arrays = read_cifar10_archive(path, archive.num_train, archive.num_test)
    _write_cache(cache, arrays, archive)
    return arrays


