"""Datasets as tensors: checksummed files, fixed splits, standardisation, deterministic batches.

Every dataset is a :class:`Dataset` of three :class:`Split` parts (train, validation, test),
each a pair ``(inputs, targets)`` of tensors on one device, so a training step needs no
per-sample Python work. A split keeps its inputs as stored (features ready to use, or ``uint8``
images) with the per-batch ``transform`` that makes them model inputs (e.g. normalisation);
a dataset may name a training augmentation, applied per batch on the device by
:class:`Batches`, the one place that decides which examples a step sees. :data:`DATASETS` is
the registry the benchmark runner reads: what it needs to know before loading (sizes, shapes,
options) and the function that loads.

- **digits** (:func:`load_digits`): the UCI optical handwritten digits, 1,797 images of 8×8
  pixels with counts 0–16, shipped in ``data/digits.npz`` (CC BY 4.0; provenance, licence and
  the split in ``data/README.md``). Fixed stratified split 1,000 / 397 / 400.
- **cifar10** (:func:`load_cifar10_task`): CIFAR-10 from its authors' binary archive
  (:mod:`sfn_teach.cifar10`: verified download, parse, cache), or with ``generated = true``
  from an archive in the same format that is written on the spot, and read by the same code.
- **cifar10_synthetic**: CIFAR-shaped random data made in memory, for throughput.

Both CIFAR tasks keep every image on the device as ``uint8`` and normalise per batch
(:func:`cifar10_dataset`); 10 % of the training images are held out for validation.

Files are found in :func:`data_dir`: ``$SFN_TEACH_DATA_DIR`` if set, else the repository's
``data/`` folder. Every file is checked against its SHA-256 before it is read.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

import numpy as np
import torch

from .checks import ArgumentError, SfnTeachError, choice, integer, real
from .cifar10 import CIFAR10Arrays, check_counts, load_cifar10
from .cifar10_generated import load_generated_cifar10, synthetic_cifar10
from .files import sha256_file
from .images import (
    CLASSES,
    IMAGE_SHAPE,
    normalize,
    random_crop_flip,
    validation_size,
    validation_split,
)

__all__ = [
    "CIFAR10_OPTIONS", "DATASETS", "DIGITS_FILE", "SPLITS", "Batches", "DataError", "Dataset",
    "DatasetInfo", "Split", "cifar10_dataset", "cifar10_part_sizes", "cifar10_sizes", "data_dir",
    "load_cifar10_synthetic", "load_cifar10_task", "load_digits", "standardise", "verify_checksum"
]

DIGITS_FILE = "digits.npz"
SPLITS = ("train", "val", "test")


class DataError(SfnTeachError, RuntimeError):
    """A data file is missing, corrupt or not what it should be."""


def data_dir() -> Path:
    """The data folder: ``$SFN_TEACH_DATA_DIR`` if set, else ``data/`` beside the package."""
    override = os.environ.get("SFN_TEACH_DATA_DIR")
    return Path(override) if override else Path(__file__).resolve().parent.parent / "data"


# --------------------------------------------------------------------------------------------
# Checksums
# --------------------------------------------------------------------------------------------


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
    actual = sha256_file(path)
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
    """One part of a dataset: ``inputs`` (N, …) as stored, ``targets`` (N,) int64, on one device.

    ``transform`` turns a batch of stored inputs into model inputs on their device (e.g.
    ``uint8`` images into normalised floats), ``None`` if they are model inputs already. It is
    applied per batch (:meth:`prepare`), so a whole split can stay on the device in its
    compact stored form.
    """

    inputs: torch.Tensor
    targets: torch.Tensor
    transform: Callable | None = None

    def __len__(self) -> int:
        return len(self.targets)

    def prepare(self, inputs: torch.Tensor) -> torch.Tensor:
        """Model inputs from stored ``inputs`` (rows of :attr:`inputs`): ``transform(inputs)``."""
        return inputs if self.transform is None else self.transform(inputs)

    def chunks(self, size: int | None = None):
        """The split in order as ``(model inputs, targets)`` batches of ``size`` (``None``: one)."""
        size = size or len(self)
        for start in range(0, len(self), size):
            rows = slice(start, start + size)
            yield self.prepare(self.inputs[rows]), self.targets[rows]


@dataclass(frozen=True)
class Dataset:
    """A classification dataset in three parts, ``train``, ``val`` and ``test``.

    ``augment(inputs, generator) -> inputs``, if set, is the training augmentation: applied by
    :class:`Batches` to each training batch of stored inputs before the split's transform,
    drawing its randomness from ``generator`` only. Evaluation never augments.
    """

    name: str
    train: Split
    val: Split
    test: Split
    num_classes: int
    augment: Callable | None = None

    def split(self, name: str) -> Split:
        """The part called ``name``: ``"train"``, ``"val"`` or ``"test"``."""
        return getattr(self, choice("split", name, SPLITS))


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
    choice("dtype", dtype, (torch.float32, torch.float64))
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


# --------------------------------------------------------------------------------------------
# CIFAR-10 as a dataset on the device
# --------------------------------------------------------------------------------------------


def cifar10_dataset(arrays: CIFAR10Arrays, dtype=torch.float32, device="cpu", *,
                    validation_fraction=0.1, split_seed=0, augment=False) -> Dataset:
    """CIFAR-10 arrays as a :class:`Dataset` whose images stay on ``device`` as ``uint8``.

    ``validation_fraction`` of the training images (the paper: 10 %) are held out by
    :func:`sfn_teach.images.validation_split` with ``split_seed``, the same hold-out for every
    training seed; the test images are the test set. Every split's transform is
    :func:`sfn_teach.images.normalize` to ``dtype`` (per batch, on the device). With
    ``augment`` the training batches get :func:`sfn_teach.images.random_crop_flip` (pad 4,
    random crop, horizontal flip; the paper's setting is without).
    """
    train_rows, validation_rows = validation_split(
        len(arrays.train_labels), validation_fraction, split_seed
    )

    def split(images, labels):
        return Split(images.to(device), labels.to(device), partial(normalize, dtype=dtype))

    return Dataset(
        name="cifar10",
        train=split(arrays.train_images[train_rows], arrays.train_labels[train_rows]),
        val=split(arrays.train_images[validation_rows], arrays.train_labels[validation_rows]),
        test=split(arrays.test_images, arrays.test_labels),
        num_classes=len(CLASSES),
        augment=random_crop_flip if augment else None,
    )


def cifar10_part_sizes(*, validation_fraction=0.1, num_train=50_000, num_test=10_000, **_):
    """``{"train", "val", "test"}`` sizes of a CIFAR task (other options are ignored).

    Raises ``ValueError`` naming the option when a part would be empty.
    """
    integer("num_train", num_train, 1)
    integer("num_test", num_test, 1)
    real("validation_fraction", validation_fraction, 0.0, 1.0, low_open=True, high_open=True)
    held_out = validation_size(num_train, validation_fraction)
    if not 1 <= held_out < num_train:
        raise ArgumentError("validation_fraction", f"= {validation_fraction} holds out {held_out} "
                            f"of num_train = {num_train} images; both parts need at least one")
    return {"train": num_train - held_out, "val": held_out, "test": num_test}


def cifar10_sizes(*, generated=False, url="", num_train=50_000, num_test=10_000, **options):
    """The sizes of the ``cifar10`` task: the real archive has 50,000 + 10,000 images, a
    ``generated`` one any multiple of 5 training images (:func:`cifar10_part_sizes`).

    Also refuses a ``url`` for a generated archive, which is never downloaded.
    """
    if generated:
        if url:
            raise ArgumentError("url", f"must be empty for a generated archive (it is written "
                                       f"here, not downloaded), got {url!r}")
        check_counts(num_train, num_test)
    else:
        for name, value, size in (("num_train", num_train, 50_000),
                                  ("num_test", num_test, 10_000)):
            if value != size:
                raise ArgumentError(name, f"must be {size:,} for the real archive (other "
                                          f"sizes need generated = true), got {value}")
    return cifar10_part_sizes(num_train=num_train, num_test=num_test, **options)


CIFAR10_OPTIONS = {
    "augment": False,             # random crop (pad 4) + horizontal flip of training batches
    "validation_fraction": 0.1,   # of the training images held out for validation
    "split_seed": 0,              # which ones (the same for every training seed)
    "num_train": 50_000,          # training images (other than 50,000: generated only)
    "num_test": 10_000,
}
"""Options (with defaults) of both CIFAR tasks; ``cifar10`` has the file options too."""


def load_cifar10_task(dtype=torch.float32, device="cpu", progress=True, *, augment=False,
                      validation_fraction=0.1, split_seed=0, num_train=50_000, num_test=10_000,
                      dir="", url="", download=True, generated=False) -> Dataset:
    """The ``cifar10`` task: :func:`cifar10_dataset` of the binary archive's images.

    The archive is found, downloaded and verified by :func:`sfn_teach.cifar10.load_cifar10`
    in the folder ``dir`` from ``url`` (``""``: that module's defaults, which honour
    ``$SFN_TEACH_DATA_DIR`` and ``$SFN_TEACH_CIFAR10_URL``); ``download=False`` only uses a
    copy already there. With ``generated``,
    :func:`sfn_teach.cifar10_generated.load_generated_cifar10` writes an archive of
    ``num_train`` + ``num_test`` random images in exactly the CIFAR-10 format under ``dir`` and
    reads it back through the same verification and parser, with no download (for tests, smoke
    runs and machines without the data).
    """
    cifar10_sizes(validation_fraction=validation_fraction, generated=generated, url=url,
                  num_train=num_train, num_test=num_test)
    if generated:
        arrays = load_generated_cifar10(dir or None, num_train, num_test, progress=progress)
    else:
        arrays = load_cifar10(dir or None, download=download, url=url or None, progress=progress)
    return cifar10_dataset(arrays, dtype, device, validation_fraction=validation_fraction,
                           split_seed=split_seed, augment=augment)


def load_cifar10_synthetic(dtype=torch.float32, device="cpu", progress=True, *, augment=False,
                           validation_fraction=0.1, split_seed=0, num_train=50_000,
                           num_test=10_000) -> Dataset:
    """The ``cifar10_synthetic`` task: :func:`sfn_teach.cifar10_generated.synthetic_cifar10`
    (seed 0) made in memory, no files, as a :func:`cifar10_dataset` (for throughput
    measurements)."""
    cifar10_part_sizes(validation_fraction=validation_fraction, num_train=num_train,
                       num_test=num_test)
    return cifar10_dataset(synthetic_cifar10(num_train, num_test), dtype, device,
                           validation_fraction=validation_fraction, split_seed=split_seed,
                           augment=augment)


# --------------------------------------------------------------------------------------------
# The registry
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class DatasetInfo:
    """A registry entry: what is known before loading, and how to load.

    ``options`` are the task's settings with their defaults (a benchmark config's ``[data]``
    table). ``sizes(**options)`` gives ``{"train": n, "val": n, "test": n}`` and raises
    ``ValueError`` naming the option for values that cannot work; ``load(dtype, device,
    progress, **options)`` returns the :class:`Dataset` (``progress``: show download bars).
    ``eval_batch_size`` is the default chunk for evaluation (``None``: whole splits).
    """

    name: str
    input_shape: tuple
    num_classes: int
    sizes: Callable
    load: Callable
    options: dict = field(default_factory=dict)
    eval_batch_size: int | None = None


DATASETS = {
    "digits": DatasetInfo(
        name="digits",
        input_shape=(64,),
        num_classes=10,
        sizes=lambda **_: {"train": 1000, "val": 397, "test": 400},
        load=lambda dtype, device, progress=True, dir="": load_digits(dtype, device, dir or None),
        options={"dir": ""},  # the folder of digits.npz ("": data_dir())
    ),
    "cifar10": DatasetInfo(
        name="cifar10",
        input_shape=IMAGE_SHAPE,
        num_classes=len(CLASSES),
        sizes=cifar10_sizes,
        load=load_cifar10_task,
        options={**CIFAR10_OPTIONS, "dir": "", "url": "", "download": True, "generated": False},
        eval_batch_size=1000,
    ),
    "cifar10_synthetic": DatasetInfo(
        name="cifar10_synthetic",
        input_shape=IMAGE_SHAPE,
        num_classes=len(CLASSES),
        sizes=cifar10_part_sizes,
        load=load_cifar10_synthetic,
        options=dict(CIFAR10_OPTIONS),
        eval_batch_size=1000,
    ),
}
"""The tasks a benchmark config can name, by its ``task``."""


# --------------------------------------------------------------------------------------------
# Minibatches in a deterministic order
# --------------------------------------------------------------------------------------------


class Batches:
    """Shuffled minibatches of a :class:`Split`, addressed by the global step number.

    Epoch ``e`` visits the examples in the order ``randperm(N)`` drawn from a generator seeded
    with ``SeedSequence([seed, e])`` (NumPy's hash of the pair, so different seeds and epochs
    give unrelated orders), and cuts it into ``N // batch_size`` batches, dropping the last
    partial one so that every step sees exactly ``batch_size`` examples. Step ``t`` is batch
    ``i = t mod steps_per_epoch`` of epoch ``e = t // steps_per_epoch``.

    With ``augment(inputs, generator)`` (a :attr:`Dataset.augment`), the stored inputs of the
    batch are augmented before the split's transform, with a generator seeded by
    ``SeedSequence([seed, e, i + 1])`` (:meth:`generator`).

    Everything is a pure function of ``(seed, t)``: there is no generator state to save, and a
    run resumed at step ``t`` sees the same batches as one that never stopped. The permutation
    and the augmentation draws come from CPU generators, so the batches are the same on every
    device; the batch itself is gathered, augmented and transformed on the data's device, with
    no per-example Python work.

    **Shards (data parallelism).** With ``shard = (p, P)`` each step returns only the ``p``-th
    of ``P`` equal consecutive parts of the global batch (rows ``p·B/P`` to ``(p+1)·B/P − 1``;
    ``batch_size`` ``B`` must be divisible by ``P``). The global batch, its order and its
    augmentation are the same for every ``p``, so the ``P`` shards of a step together are
    exactly the batch one process would see.
    """

    def __init__(self, split: Split, batch_size: int, seed: int, augment: Callable | None = None,
                 shard: tuple[int, int] = (0, 1)):
        integer("batch_size", batch_size, 1, len(split))  # at most the number of examples
        index, count = shard
        if not 0 <= index < count:
            raise ArgumentError("shard", f"must be (p, P) with 0 <= p < P, got {shard!r}")
        if batch_size % count:
            raise ArgumentError("batch_size", f"must be divisible by the number of shards "
                                              f"{count}, got {batch_size}")
        self.split, self.batch_size, self.seed, self.augment = split, batch_size, seed, augment
        self.shard = slice(index * batch_size // count, (index + 1) * batch_size // count)
        self.steps_per_epoch = len(split) // batch_size
        self._epoch, self._order = None, None

    def order(self, epoch: int) -> torch.Tensor:
        """The permutation of the examples for ``epoch`` (int64, on the data's device)."""
        generator = torch.Generator().manual_seed(_mixed_seed(self.seed, epoch))
        order = torch.randperm(len(self.split), generator=generator)
        return order.to(self.split.targets.device)

    def generator(self, step: int) -> torch.Generator:
        """The CPU generator of step ``step``'s augmentation (a fresh one per call)."""
        epoch, index = divmod(step, self.steps_per_epoch)
        return torch.Generator().manual_seed(_mixed_seed(self.seed, epoch, index + 1))

    def __getitem__(self, step: int) -> tuple[torch.Tensor, torch.Tensor]:
        """The batch ``(model inputs, targets)`` of global step ``step`` (counted from 0); with
        a shard, this process's part of it."""
        epoch, index = divmod(step, self.steps_per_epoch)
        if epoch != self._epoch:
            self._epoch, self._order = epoch, self.order(epoch)
        rows = self._order[index * self.batch_size : (index + 1) * self.batch_size]
        inputs = self.split.inputs[rows]
        if self.augment is not None:  # the whole batch, so that every shard draws as one process
            inputs = self.augment(inputs, self.generator(step))
        return self.split.prepare(inputs[self.shard]), self.split.targets[rows][self.shard]


def _mixed_seed(*words: int) -> int:
    """A well-mixed 32-bit seed from non-negative ints (NumPy's ``SeedSequence`` hash).

    ``SeedSequence`` pads short lists with zeros, so ``(a, b)`` and ``(a, b, 0)`` give the same
    seed: callers that extend a key append words ``>= 1``.
    """
    return int(np.random.SeedSequence(list(words)).generate_state(1)[0])
