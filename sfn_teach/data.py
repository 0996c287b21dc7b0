"""Datasets as tensors: checksummed files, fixed splits, standardisation, deterministic batches.

Every dataset is a :class:`Dataset` of three :class:`Split` parts (train, validation, test),
each a pair ``(inputs, targets)`` of tensors on one device, so a training step needs no
per-sample Python work. :data:`DATASETS` is the registry the benchmark runner reads: what it
needs to know before loading (sizes, shapes) and the function that loads.

- **digits** (:func:`load_digits`): the UCI optical handwritten digits, 1,797 images of 8×8
  pixels with counts 0–16, shipped in ``data/digits.npz`` (CC BY 4.0; provenance, licence and
  the split in ``data/README.md``). Fixed stratified split 1,000 / 397 / 400.

Files are found in :func:`data_dir`: ``$SFN_TEACH_DATA_DIR`` if set, else the repository's
``data/`` folder. Every file is checked against its SHA-256 before it is read.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

DIGITS_FILE = "digits.npz"
SPLITS = ("train", "val", "test")


class DataError(RuntimeError):
    """A data file is missing, corrupt or not what it should be."""


def data_dir() -> Path:
    """The data folder: ``$SFN_TEACH_DATA_DIR`` if set, else ``data/`` beside the package."""
    override = os.environ.get("SFN_TEACH_DATA_DIR")
    return Path(override) if override else Path(__file__).resolve().parent.parent / "data"


# --------------------------------------------------------------------------------------------
# Checksums
# --------------------------------------------------------------------------------------------


def sha256_of(path) -> str:
    """The SHA-256 of the file at ``path``, as 64 hex digits."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def verify_checksum(path, checksum_path, restore_hint) -> None:
    """Raise :class:`DataError` unless ``path`` has the SHA-256 recorded in ``checksum_path``.

    ``checksum_path`` is in ``sha256sum`` format (``<64 hex digits>  <name>``); ``restore_hint``
    says how to get a good copy and ends every message.
    """
    path, checksum_path = Path(path), Path(checksum_path)
    for required in (path, checksum_path):
        if not required.is_file():
            raise DataError(f"{required} is missing; {restore_hint}")
    expected = checksum_path.read_text().split()[:1]
    if not expected or len(expected[0]) != 64:
        raise DataError(f"{checksum_path} holds no SHA-256 digest; {restore_hint}")
    actual = sha256_of(path)
    if actual != expected[0].lower():
        raise DataError(
            f"{path} is corrupt: its SHA-256 is {actual}, but {checksum_path} says "
            f"{expected[0]}; {restore_hint}"
        )


# --------------------------------------------------------------------------------------------
# Datasets as tensors
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Split:
    """One part of a dataset: ``inputs`` (N, …) floating point and ``targets`` (N,) int64."""

    inputs: torch.Tensor
    targets: torch.Tensor

    def __len__(self) -> int:
        return len(self.targets)


@dataclass(frozen=True)
class Dataset:
    """A classification dataset in three parts, ``train``, ``val`` and ``test``."""

    name: str
    train: Split
    val: Split
    test: Split
    num_classes: int

    def split(self, name: str) -> Split:
        """The part called ``name``: ``"train"``, ``"val"`` or ``"test"``."""
        if name not in SPLITS:
            raise ValueError(f"split must be one of {SPLITS}, got {name!r}")
        return getattr(self, name)


def standardise(train: torch.Tensor, *others: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """Per-feature standardisation fitted on ``train``: ``x ↦ (x − m)/s`` for every tensor.

    ``m`` and ``s`` are the mean and (population) standard deviation of each feature over the
    rows of ``train``, computed in float64. A feature that is constant on ``train`` has
    ``s = 0``; it is only centred (``s := 1``), so it stays exactly 0 there. Returns the
    standardised ``train`` followed by ``others``, each in its own dtype.
    """
    rows = train.to(torch.float64)
    mean = rows.mean(dim=0)
    std = rows.std(dim=0, correction=0)
    std = torch.where(std > 0, std, torch.ones_like(std))
    return tuple(((x.to(torch.float64) - mean) / std).to(x.dtype) for x in (train, *others))


def load_digits(dtype=torch.float32, device="cpu", directory=None) -> Dataset:
    """The UCI digits as a :class:`Dataset` of standardised 64-pixel rows.

    Reads ``digits.npz`` from ``directory`` (default :func:`data_dir`) after checking it
    against ``digits.sha256``; the split is the file's own (its ``split`` array: 0 train,
    1 validation, 2 test; 1,000 / 397 / 400 images, stratified).
    Inputs are the 8×8 pixel counts flattened to 64 features and standardised with the
    training part's statistics (:func:`standardise`), in ``dtype`` on ``device``; targets are
    the digits 0–9 as int64.
    """
    if dtype not in (torch.float32, torch.float64):
        raise ValueError(f"dtype must be torch.float32 or torch.float64, got {dtype!r}")
    directory = Path(directory) if directory is not None else data_dir()
    path = directory / DIGITS_FILE
    verify_checksum(
        path,
        directory / "digits.sha256",
        "restore the shipped copy with `git checkout -- data/digits.npz data/digits.sha256` "
        "(see data/README.md), or set SFN_TEACH_DATA_DIR to a folder that holds both files",
    )
    with np.load(path, allow_pickle=False) as archive:
        images, labels, split = archive["images"], archive["labels"], archive["split"]
    inputs = torch.from_numpy(images.reshape(len(images), -1).astype(np.float64))
    targets = torch.from_numpy(labels.astype(np.int64))
    parts = [torch.from_numpy(np.flatnonzero(split == code)) for code in range(3)]
    standardised = standardise(*(inputs[rows] for rows in parts))
    return Dataset(
        name="digits",
        num_classes=10,
        **{
            name: Split(x.to(device=device, dtype=dtype), targets[rows].to(device))
            for name, x, rows in zip(SPLITS, standardised, parts)
        },
    )


@dataclass(frozen=True)
class DatasetInfo:
    """A registry entry: what is known before loading, and ``load(dtype, device)``."""

    name: str
    sizes: dict  # number of examples per part: {"train": …, "val": …, "test": …}
    input_shape: tuple
    num_classes: int
    load: Callable  # (dtype, device) -> Dataset


DATASETS = {
    "digits": DatasetInfo(
        name="digits",
        sizes={"train": 1000, "val": 397, "test": 400},
        input_shape=(64,),
        num_classes=10,
        load=load_digits,
    ),
}


# --------------------------------------------------------------------------------------------
# Minibatches in a deterministic order
# --------------------------------------------------------------------------------------------


class Batches:
    """Shuffled minibatches of a :class:`Split`, addressed by the global step number.

    Epoch ``e`` visits the examples in the order ``randperm(N)`` drawn from a generator seeded
    with ``SeedSequence([seed, e])`` (NumPy's hash of the pair, so different seeds and epochs
    give unrelated orders), and cuts it into ``N // batch_size`` batches, dropping the last
    partial one so that every step sees exactly ``batch_size`` examples. Step ``t`` is batch
    ``t mod steps_per_epoch`` of epoch ``t // steps_per_epoch``.

    The order is a pure function of ``(seed, t)``: there is no generator state to save, and a
    run resumed at step ``t`` sees the same batches as one that never stopped. The batch is
    gathered by indexing on the data's device.
    """

    def __init__(self, split: Split, batch_size: int, seed: int):
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
        if batch_size > len(split):
            raise ValueError(
                f"batch_size must be at most the number of examples ({len(split)}), "
                f"got {batch_size}"
            )
        self.split, self.batch_size, self.seed = split, batch_size, seed
        self.steps_per_epoch = len(split) // batch_size
        self._epoch, self._order = None, None

    def order(self, epoch: int) -> torch.Tensor:
        """The permutation of the examples for ``epoch`` (int64, on the data's device)."""
        seed = int(np.random.SeedSequence([self.seed, epoch]).generate_state(1)[0])
        generator = torch.Generator().manual_seed(seed)
        order = torch.randperm(len(self.split), generator=generator)
        return order.to(self.split.targets.device)

    def __getitem__(self, step: int) -> tuple[torch.Tensor, torch.Tensor]:
        """The batch ``(inputs, targets)`` of global step ``step`` (counted from 0)."""
        epoch, index = divmod(step, self.steps_per_epoch)
        if epoch != self._epoch:
            self._epoch, self._order = epoch, self.order(epoch)
        rows = self._order[index * self.batch_size : (index + 1) * self.batch_size]
        return self.split.inputs[rows], self.split.targets[rows]
