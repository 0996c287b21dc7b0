"""The shipped digits: checksum, split, standardisation, errors, deterministic batches."""

import hashlib
import shutil

import numpy as np
import pytest
import torch

from sfn_teach.data import (
    DATASETS,
    Batches,
    DataError,
    Split,
    data_dir,
    load_digits,
    standardise,
    verify_checksum,
)

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def digits():
    return load_digits(torch.float64)


def test_file_is_the_documented_one():
    digest = hashlib.sha256((data_dir() / "digits.npz").read_bytes()).hexdigest()
    assert (data_dir() / "digits.sha256").read_text().split() == [digest, "digits.npz"]
    with np.load(data_dir() / "digits.npz", allow_pickle=False) as archive:
        assert sorted(archive.files) == ["images", "labels", "split"]
        images, labels, split = archive["images"], archive["labels"], archive["split"]
    assert images.shape == (1797, 8, 8) and images.dtype == np.uint8
    assert images.min() == 0 and images.max() == 16
    assert labels.dtype == np.uint8 and set(np.unique(labels)) == set(range(10))
    assert np.bincount(split).tolist() == [1000, 397, 400]
    # stratified: every class is represented in each part in proportion (within 2 images)
    for part, size in enumerate((1000, 397, 400)):
        counts = np.bincount(labels[split == part], minlength=10)
        expected = np.bincount(labels) * size / len(labels)
        assert np.all(np.abs(counts - expected) <= 2)


def test_splits_shapes_dtypes_and_registry(digits):
    info = DATASETS["digits"]
    sizes = info.sizes(**info.options)
    for name in ("train", "val", "test"):
        part = digits.split(name)
        assert len(part) == sizes[name]
        assert part.inputs.shape == (sizes[name], *info.input_shape)
        assert part.inputs.dtype == torch.float64 and part.targets.dtype == torch.int64
    assert digits.num_classes == info.num_classes == 10
    assert load_digits().train.inputs.dtype == torch.float32
    with pytest.raises(ValueError, match="split"):
        digits.split("validation")
    with pytest.raises(ValueError, match="dtype"):
        load_digits(torch.float16)


def test_standardisation_is_fitted_on_train_only(digits):
    train = digits.train.inputs
    constant = train.std(dim=0, correction=0) == 0
    assert constant.any()  # corner pixels are always blank in the training part
    assert torch.allclose(train.mean(dim=0), torch.zeros(64, dtype=torch.float64), atol=1e-12)
    std = train.std(dim=0, correction=0)
    assert torch.allclose(std[~constant], torch.ones_like(std[~constant]), atol=1e-12)
    assert torch.all(train[:, constant] == 0)
    # val/test use the training statistics, so their means are not exactly 0
    assert digits.val.inputs.mean(dim=0).abs().max() > 1e-3


def test_standardise_constant_feature_is_only_centred():
    train = torch.tensor([[1.0, 5.0], [3.0, 5.0]])
    other = torch.tensor([[2.0, 7.0]])
    x, y = standardise(train, other)
    assert torch.equal(x, torch.tensor([[-1.0, 0.0], [1.0, 0.0]]))
    assert torch.equal(y, torch.tensor([[0.0, 2.0]]))


def test_missing_and_corrupt_files_are_named(tmp_path):
    with pytest.raises(DataError, match=r"digits\.npz is missing.*git checkout"):
        load_digits(directory=tmp_path)
    shutil.copy(data_dir() / "digits.sha256", tmp_path)
    damaged = bytearray((data_dir() / "digits.npz").read_bytes())
    damaged[1000] ^= 0xFF
    (tmp_path / "digits.npz").write_bytes(bytes(damaged))
    with pytest.raises(DataError, match=r"digits\.npz is corrupt: its SHA-256"):
        load_digits(directory=tmp_path)
    (tmp_path / "digits.npz").write_bytes(bytes(damaged[:500]))  # truncated
    with pytest.raises(DataError, match="corrupt"):
        load_digits(directory=tmp_path)
    (tmp_path / "digits.sha256").write_text("not a digest\n")
    with pytest.raises(DataError, match="holds no SHA-256"):
        verify_checksum(tmp_path / "digits.npz", tmp_path / "digits.sha256", "restore it")


def test_data_dir_override(tmp_path, monkeypatch):
    monkeypatch.setenv("SFN_TEACH_DATA_DIR", str(tmp_path))
    assert data_dir() == tmp_path
    with pytest.raises(DataError, match=str(tmp_path)):
        load_digits()


def test_batches_are_a_function_of_seed_and_step(digits):
    batches = Batches(digits.train, 300, seed=7)
    assert batches.steps_per_epoch == 3  # 1,000 // 300: the last 100 are dropped each epoch
    epoch = torch.cat([batches[step][1] for step in range(3)])
    order = batches.order(0)
    assert torch.equal(epoch, digits.train.targets[order[:900]])
    assert sorted(order.tolist()) == list(range(1000))
    # random access equals sequential access; another instance gives the same batches
    again = Batches(digits.train, 300, seed=7)
    for step in (5, 1, 4):
        assert all(torch.equal(a, b) for a, b in zip(batches[step], again[step]))
    assert not torch.equal(batches.order(1), order)
    assert not torch.equal(Batches(digits.train, 300, seed=8).order(0), order)


def test_batches_reject_bad_sizes():
    split = Split(torch.zeros(10, 2), torch.zeros(10, dtype=torch.int64))
    with pytest.raises(ValueError, match="batch_size must be an int between 1 and 10, got 11"):
        Batches(split, 11, seed=0)  # at most the number of examples
    with pytest.raises(ValueError, match="batch_size must be an int between 1 and 10, got 0"):
        Batches(split, 0, seed=0)
