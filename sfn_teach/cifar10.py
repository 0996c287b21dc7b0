"""CIFAR-10 from its authors' binary distribution, and batches that live on the device.

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

**On the device.** The batch operations work on whole batches on the images' device, with no
per-sample Python work: per-channel normalisation of ``uint8`` images (:func:`normalize`) and
the random crop (zero padding 4) and horizontal flip (:func:`random_crop_flip`).
:func:`sfn_teach.data.cifar10_dataset` keeps the images on the device as ``uint8`` with these
as per-batch transform and augmentation, and :class:`sfn_teach.data.Batches` shuffles them;
:func:`validation_split` is the paper's hold-out of 10 % of the training set.

**Generated data.** :func:`write_cifar10_archive` writes an archive in exactly this format and
layout from :func:`synthetic_cifar10` (random images with a learnable class template), so tests
and CPU smoke runs exercise the real download and parsing code; :func:`load_generated_cifar10`
writes one into the data directory and reads it back through :func:`load_cifar10`.
:func:`synthetic_cifar_batch` makes one CIFAR-shaped batch on the device for throughput
measurements.
"""

from __future__ import annotations

import gzip
import hashlib
import io
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
import torch.nn.functional as F
from tqdm.auto import tqdm

URL = "https://www.cs.toronto.edu/~kriz/cifar-10-binary.tar.gz"
ARCHIVE_NAME = "cifar-10-binary.tar.gz"
CACHE_NAME = "cifar10-uint8.npz"
MEMBER_DIR = "cifar-10-batches-bin"
TRAIN_MEMBERS = tuple(f"{MEMBER_DIR}/data_batch_{i}.bin" for i in range(1, 6))
TEST_MEMBER = f"{MEMBER_DIR}/test_batch.bin"
IGNORED_MEMBERS = (f"{MEMBER_DIR}/batches.meta.txt", f"{MEMBER_DIR}/readme.html")
CLASSES = (
    "airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck",
)
IMAGE_SHAPE = (3, 32, 32)
IMAGE_BYTES = 3 * 32 * 32
RECORD_BYTES = 1 + IMAGE_BYTES
# Per-channel mean and standard deviation of the 50,000 training images, pixel values in [0, 1].
MEAN = (0.4914, 0.4822, 0.4465)
STD = (0.2470, 0.2435, 0.2616)

_CHUNK = 1 << 20
_CHECK_URL = "Check the URL or mirror (the url argument or SFN_TEACH_CIFAR10_URL)."
_RETRY = "Run again to download afresh, or use another mirror (the url argument or " \
    "SFN_TEACH_CIFAR10_URL)."


class CIFAR10Error(RuntimeError):
    """A CIFAR-10 file is missing, corrupt, truncated or not the expected one."""


def _check_positive_int(name, value):
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be a positive int, got {value!r}")


def check_counts(num_train, num_test):
    """Validate image counts: positive, and ``num_train`` split evenly over five files."""
    _check_positive_int("num_train", num_train)
    _check_positive_int("num_test", num_test)
    if num_train % len(TRAIN_MEMBERS):
        raise ValueError(
            f"num_train must be a multiple of {len(TRAIN_MEMBERS)} (one fifth per data_batch "
            f"file), got {num_train}"
        )


@dataclass(frozen=True)
class ArchiveSpec:
    """What the archive must be: its ``size`` in bytes, ``sha256`` and number of images.

    The training images are split evenly over the five ``data_batch`` files, so ``num_train``
    must be a multiple of 5. :data:`CIFAR10_BINARY` describes the real archive; generated
    archives (:func:`write_cifar10_archive`) return their own spec.
    """

    sha256: str
    size: int
    num_train: int = 50_000
    num_test: int = 10_000

    def __post_init__(self):
        if not (isinstance(self.sha256, str) and re.fullmatch("[0-9a-f]{64}", self.sha256)):
            raise ValueError(f"sha256 must be 64 lowercase hex digits, got {self.sha256!r}")
        _check_positive_int("size", self.size)
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
# Files: where they go, checksums, atomic writes
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


def sha256_file(path) -> str:
    """The SHA-256 of the file at ``path`` as 64 lowercase hex digits (read in 1 MiB chunks)."""
    digest = hashlib.sha256()
    with open(path, "rb") as file:
        while chunk := file.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def _atomic_write(path, write):
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
        while chunk := stream.read(_CHUNK):
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
    _check_positive_int("max_attempts", max_attempts)
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
    _atomic_write(path, lambda file: np.savez(file, source_sha256=archive.sha256, **contents))


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


def load_generated_cifar10(data_dir=None, num_train=50_000, num_test=10_000, progress=True):
    """A generated archive written into the data directory and read back like the real one.

    Writes :func:`write_cifar10_archive` (seed 0; ``num_train + num_test`` images) to
    ``generated-<num_train>-<num_test>/cifar-10-binary.tar.gz`` under :func:`cifar10_dir`
    ``(data_dir)`` — its own folder, so it never meets a real archive or its cache — and
    returns :func:`load_cifar10` of that folder without download, for the archive's own size
    and SHA-256. That is the verification, the streaming parser and the cache of the real data,
    with no network. The archive is rewritten on every call (it is reproducible: the same
    bytes); the parsed cache is reused while it matches.
    """
    directory = cifar10_dir(data_dir) / f"generated-{num_train}-{num_test}"
    directory.mkdir(parents=True, exist_ok=True)
    archive = write_cifar10_archive(directory / ARCHIVE_NAME, num_train, num_test)
    return load_cifar10(directory, download=False, archive=archive, progress=progress)


# --------------------------------------------------------------------------------------------
# Generated data in the same format
# --------------------------------------------------------------------------------------------


def synthetic_cifar10(num_train=50_000, num_test=10_000, seed=0) -> CIFAR10Arrays:
    """Random CIFAR-shaped data that a network can learn, a pure function of ``seed``.

    Each class ``c`` has a random template image ``T_c``; an image of class ``c`` is
    ``(T_c + U) // 2`` with uniform noise ``U`` in 0–255, so the class is visible but noisy.
    Labels are uniform in 0–9. Uses a CPU generator: identical on every machine.
    """
    generator = torch.Generator().manual_seed(seed)
    templates = torch.randint(
        256, (len(CLASSES), *IMAGE_SHAPE), generator=generator, dtype=torch.int16
    )

    def split(n):
        labels = torch.randint(len(CLASSES), (n,), generator=generator)
        noise = torch.randint(256, (n, *IMAGE_SHAPE), generator=generator, dtype=torch.int16)
        return ((templates[labels] + noise) // 2).to(torch.uint8), labels

    return CIFAR10Arrays(*split(num_train), *split(num_test))


def _records(images, labels):
    """The binary records ``label byte + 3072 pixel bytes`` of a split, as ``bytes``."""
    records = np.empty((len(labels), RECORD_BYTES), dtype=np.uint8)
    records[:, 0] = labels.numpy()
    records[:, 1:] = images.reshape(len(labels), IMAGE_BYTES).numpy()
    return records.tobytes()


def _add_member(tar, name, data=None):
    """Add the regular file ``name`` holding ``data`` to ``tar`` (the directory if ``None``)."""
    info = tarfile.TarInfo(name)
    info.mtime = 0
    if data is None:
        info.type, info.mode = tarfile.DIRTYPE, 0o755
        tar.addfile(info)
    else:
        info.size, info.mode = len(data), 0o644
        tar.addfile(info, io.BytesIO(data))


def write_cifar10_archive(path, num_train=50_000, num_test=10_000, seed=0) -> ArchiveSpec:
    """Write :func:`synthetic_cifar10` as a CIFAR-10 binary archive at ``path``; return its spec.

    Same tar layout, member names and record format as ``cifar-10-binary.tar.gz``: the
    directory ``cifar-10-batches-bin``, five ``data_batch_i.bin`` with ``num_train/5`` records
    each, ``test_batch.bin`` with ``num_test``, ``batches.meta.txt`` and ``readme.html``. The
    defaults give a full-size archive (50,000 + 10,000 images, ~185 MB, seconds to write).
    Written atomically and reproducibly (fixed timestamps); the returned
    :class:`ArchiveSpec` holds its size and SHA-256, ready for :func:`load_cifar10`.
    """
    check_counts(num_train, num_test)
    arrays = synthetic_cifar10(num_train, num_test, seed)
    per_file = num_train // len(TRAIN_MEMBERS)

    def write(file):
        with gzip.GzipFile("", "wb", 1, file, mtime=0) as gz, \
                tarfile.open(fileobj=gz, mode="w", format=tarfile.GNU_FORMAT) as tar:
            _add_member(tar, MEMBER_DIR)
            for i, name in enumerate(TRAIN_MEMBERS):
                rows = slice(i * per_file, (i + 1) * per_file)
                _add_member(tar, name, _records(arrays.train_images[rows],
                                                arrays.train_labels[rows]))
            _add_member(tar, TEST_MEMBER, _records(arrays.test_images, arrays.test_labels))
            _add_member(tar, IGNORED_MEMBERS[0], "\n".join(CLASSES).encode() + b"\n")
            _add_member(tar, IGNORED_MEMBERS[1], b"<html><body>generated by sfn_teach"
                                                 b"</body></html>\n")

    _atomic_write(path, write)
    return ArchiveSpec.of_file(path, num_train, num_test)


def synthetic_cifar_batch(batch_size, device=None, generator=None):
    """One normalised batch ``(float32 [B, 3, 32, 32], int64 [B])`` of random CIFAR-shaped data.

    Uniform random pixels through :func:`normalize` and uniform labels, made directly on
    ``device`` (``generator``, if given, must live there): for throughput measurements, where
    the content does not matter but the shapes, dtypes and normalisation cost do.
    """
    images = torch.randint(
        256, (batch_size, *IMAGE_SHAPE), generator=generator, device=device, dtype=torch.uint8
    )
    labels = torch.randint(len(CLASSES), (batch_size,), generator=generator, device=device)
    return normalize(images), labels


# --------------------------------------------------------------------------------------------
# Batch operations on the device
# --------------------------------------------------------------------------------------------


def normalize(images, mean=MEAN, std=STD, dtype=torch.float32):
    """``x ↦ (x/255 − mean_c)/std_c`` per channel ``c``, for ``uint8 [N, 3, H, W]`` images.

    Computed on the images' device in one broadcast; returns ``dtype`` (float32) with the
    images' memory format.
    """
    if images.dtype != torch.uint8 or images.dim() != 4 or images.shape[1] != len(mean):
        raise ValueError(
            f"images must be uint8 [N, {len(mean)}, H, W], got {images.dtype} "
            f"{tuple(images.shape)}"
        )
    mean = torch.tensor(mean, dtype=dtype, device=images.device).view(1, -1, 1, 1)
    std = torch.tensor(std, dtype=dtype, device=images.device).view(1, -1, 1, 1)
    return images.to(dtype).div_(255).sub_(mean).div_(std)


def random_crop_flip(images, generator=None, padding=4):
    """Random translation and horizontal flip of a batch ``[N, C, H, W]``, without a loop.

    Per image, independently: pad by ``padding`` zeros on each side, take the ``H×W`` window
    at a uniform offset ``(dy, dx) ∈ {0 … 2·padding}²`` and, with probability ½, reverse the
    width axis — i.e. ``out[n, c, i, j] = padded[n, c, i + dy, j + dx]``, or ``… W − 1 − j + dx``
    when flipped. The standard CIFAR augmentation (crop 32, pad 4, flip), done by one gather on
    the images' device; the dtype is kept, so apply it to ``uint8`` images before
    :func:`normalize` (the padding is then black). The ``3N`` random numbers are drawn from
    ``generator`` on its own device (the default generator of the images' device if ``None``)
    and moved to the images: with a CPU generator the result is the same on every device.
    """
    if images.dim() != 4:
        raise ValueError(f"images must be [N, C, H, W], got shape {tuple(images.shape)}")
    if isinstance(padding, bool) or not isinstance(padding, int) or padding < 0:
        raise ValueError(f"padding must be an int >= 0, got {padding!r}")
    n, channels, height, width = images.shape
    device = images.device
    source = generator.device if generator is not None else device
    padded = F.pad(images, (padding, padding, padding, padding))
    shifts = torch.randint(2 * padding + 1, (2, n, 1), generator=generator, device=source)
    dy, dx = shifts.to(device)
    flip = (torch.rand(n, 1, generator=generator, device=source) < 0.5).to(device)
    rows = dy + torch.arange(height, device=device)
    columns = torch.arange(width, device=device)
    columns = dx + torch.where(flip, columns.flip(0), columns)
    return padded[
        torch.arange(n, device=device).view(n, 1, 1, 1),
        torch.arange(channels, device=device).view(1, channels, 1, 1),
        rows.view(n, 1, height, 1),
        columns.view(n, 1, 1, width),
    ]


def validation_size(num_train, fraction):
    """How many of ``num_train`` images :func:`validation_split` holds out, ``round(f·N)``."""
    if not 0 <= fraction < 1:
        raise ValueError(f"fraction must be in [0, 1), got {fraction!r}")
    return round(fraction * num_train)


def validation_split(num_train, fraction=0.1, seed=0):
    """Disjoint index sets ``(train, validation)`` covering ``0 … num_train−1``, sorted.

    :func:`validation_size` indices, drawn uniformly without replacement by a CPU generator
    seeded with ``seed``, are held out for validation (the same on every machine).
    """
    held_out = validation_size(num_train, fraction)
    permutation = torch.randperm(num_train, generator=torch.Generator().manual_seed(seed))
    return permutation[held_out:].sort().values, permutation[:held_out].sort().values
