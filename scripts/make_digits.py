"""Write data/digits.npz and data/digits.sha256 from scikit-learn's copy of the UCI digits.

    python scripts/make_digits.py PATH/TO/sklearn/datasets/data/digits.csv.gz

The input is the gzipped CSV that scikit-learn bundles (1,797 rows of 64 pixel counts 0–16 and
a label 0–9); scikit-learn itself is not needed, only that file. The output holds three arrays,
read with ``numpy.load(..., allow_pickle=False)``:

- ``images``: uint8, shape (1797, 8, 8), values 0–16;
- ``labels``: uint8, shape (1797,), values 0–9;
- ``split``: uint8, shape (1797,), 0 = train (1,000), 1 = validation (397), 2 = test (400).

The split is stratified: every class's rows are shuffled with ``numpy.random.default_rng(SEED)``
and the classes interleaved by relative rank (row ``i`` of a class of size ``n_c`` gets the key
``(rank_i + ½)/n_c``, stably sorted), so every prefix of the order, and hence each of the three
parts, has the class proportions of the whole set. The first 1,000 rows of that order are
train, the next 397 validation, the last 400 test.

The zip archive is written with fixed timestamps, so running this again reproduces the file
byte for byte (and its SHA-256).
"""

import gzip
import hashlib
import io
import sys
import zipfile
from pathlib import Path

import numpy as np

SEED = 20231023
SIZES = {"train": 1000, "val": 397, "test": 400}
OUT = Path(__file__).resolve().parent.parent / "data"


def read_csv(path):
    with gzip.open(path, "rt") as f:
        table = np.loadtxt(f, delimiter=",", dtype=np.int64)
    if table.shape != (1797, 65) or table.min() < 0 or table[:, :64].max() > 16:
        raise ValueError(f"{path} is not the 1797 x 65 UCI digits table, got {table.shape}")
    return table[:, :64].reshape(-1, 8, 8).astype(np.uint8), table[:, 64].astype(np.uint8)


def stratified_split(labels):
    rng = np.random.default_rng(SEED)
    key = np.empty(len(labels))
    for c in np.unique(labels):
        rows = rng.permutation(np.flatnonzero(labels == c))
        key[rows] = (np.arange(len(rows)) + 0.5) / len(rows)
    order = np.argsort(key, kind="stable")
    split = np.empty(len(labels), dtype=np.uint8)
    bounds = np.cumsum([0, *SIZES.values()])
    for part, (start, stop) in enumerate(zip(bounds[:-1], bounds[1:])):
        split[order[start:stop]] = part
    return split


def write_npz(path, arrays):
    """``numpy.savez_compressed`` with fixed zip timestamps, so the bytes are reproducible."""
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        for name, array in arrays.items():
            buffer = io.BytesIO()
            np.lib.format.write_array(buffer, np.ascontiguousarray(array), allow_pickle=False)
            info = zipfile.ZipInfo(f"{name}.npy", date_time=(1980, 1, 1, 0, 0, 0))
            info.compress_type = zipfile.ZIP_DEFLATED
            archive.writestr(info, buffer.getvalue())


def main(csv_path):
    images, labels = read_csv(csv_path)
    arrays = {"images": images, "labels": labels, "split": stratified_split(labels)}
    write_npz(OUT / "digits.npz", arrays)
    digest = hashlib.sha256((OUT / "digits.npz").read_bytes()).hexdigest()
    (OUT / "digits.sha256").write_text(f"{digest}  digits.npz\n")
    print(f"wrote {OUT / 'digits.npz'} (sha256 {digest})")


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit(__doc__.split("\n\n")[1])
    main(sys.argv[1])
