"""CIFAR-10: download, verification and parsing through a real HTTP server; batches on the device.

No copy of CIFAR-10 exists here, so the archive is generated in exactly the binary format
(:func:`write_cifar10_archive`) and served by ``http.server`` on 127.0.0.1, with a handler that
honours ``Range`` (or ignores it) and can drop the connection after a number of bytes.
"""

import dataclasses
import hashlib
import io
import os
import tarfile
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from sfn_teach.cifar10 import (
    ARCHIVE_NAME,
    CACHE_NAME,
    RECORD_BYTES,
    TEST_MEMBER,
    TRAIN_MEMBERS,
    ArchiveSpec,
    CIFAR10Arrays,
    CIFAR10Error,
    download_cifar10,
    load_cifar10,
    read_cifar10_archive,
    sha256_file,
)
from sfn_teach.cifar10_generated import (
    load_generated_cifar10,
    synthetic_cifar10,
    write_cifar10_archive,
)
from sfn_teach.data import Batches, cifar10_dataset
from sfn_teach.images import (
    MEAN,
    STD,
    normalize,
    random_crop_flip,
    synthetic_cifar_batch,
    validation_split,
)

NUM_TRAIN, NUM_TEST, SEED = 1000, 100, 3  # 200 records per training file


# --------------------------------------------------------------------------------------------
# A local HTTP server and archives
# --------------------------------------------------------------------------------------------


@dataclasses.dataclass
class Server:
    """What the server serves (``files``: path -> bytes), how it misbehaves, what it was asked."""

    base: str = ""
    files: dict = dataclasses.field(default_factory=dict)
    requests: list = dataclasses.field(default_factory=list)  # (path, Range header or None)
    drop_after: int = 0  # body bytes sent before the connection is dropped ...
    drops: int = 0  # ... for this many responses
    ignore_range: bool = False

    def serve(self, data, name="/cifar.tar.gz"):
        self.files[name] = data
        return self.base + name


def _handler(server):
    class Handler(BaseHTTPRequestHandler):
        def do_GET(self):
            range_header = self.headers.get("Range")
            server.requests.append((self.path, range_header))
            data = server.files.get(self.path)
            if data is None:
                return self.send_error(404)
            start = 0
            if range_header and not server.ignore_range:
                start = int(range_header.removeprefix("bytes=").split("-")[0])
                if start >= len(data):
                    return self.send_error(416)
                self.send_response(206)
                self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
            else:
                self.send_response(200)
            body = data[start:]
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            if server.drops:
                server.drops -= 1
                body = body[: server.drop_after]
            self.wfile.write(body)  # HTTP/1.0: the connection closes after the response

        def log_message(self, *args):
            pass

    return Handler


@pytest.fixture
def server():
    state = Server()
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _handler(state))
    thread = threading.Thread(target=httpd.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    state.base = f"http://127.0.0.1:{httpd.server_address[1]}"
    yield state
    httpd.shutdown()
    httpd.server_close()
    thread.join()


@pytest.fixture(scope="module")
def archive(tmp_path_factory):
    """A generated archive: ``(bytes, spec)``."""
    path = tmp_path_factory.mktemp("archive") / ARCHIVE_NAME
    spec = write_cifar10_archive(path, NUM_TRAIN, NUM_TEST, seed=SEED)
    return path.read_bytes(), spec


@pytest.fixture(scope="module")
def expected():
    return synthetic_cifar10(NUM_TRAIN, NUM_TEST, seed=SEED)


def tar_entries(data):
    """The members of a ``.tar.gz`` as ``[(TarInfo, bytes or None)]``, in order."""
    with tarfile.open(fileobj=io.BytesIO(data), mode="r:gz") as tar:
        return [(m, tar.extractfile(m).read() if m.isfile() else None) for m in tar]


def make_tar(entries, num_train=NUM_TRAIN, num_test=NUM_TEST):
    """``(bytes, spec)`` of a ``.tar.gz`` holding ``entries`` (``(TarInfo, bytes or None)``)."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        for info, data in entries:
            if data is not None:
                info.size = len(data)
            tar.addfile(info, None if data is None else io.BytesIO(data))
    data = buffer.getvalue()
    return data, ArchiveSpec(hashlib.sha256(data).hexdigest(), len(data), num_train, num_test)


def regular(name, data):
    return tarfile.TarInfo(name), data


def assert_equal_arrays(actual, wanted):
    for field in dataclasses.fields(CIFAR10Arrays):
        a, b = getattr(actual, field.name), getattr(wanted, field.name)
        assert a.dtype == b.dtype and torch.equal(a, b), field.name


# --------------------------------------------------------------------------------------------
# Download, verification, parsing
# --------------------------------------------------------------------------------------------


def test_download_parse_and_cache_round_trip(server, archive, expected, tmp_path):
    data, spec = archive
    url = server.serve(data)
    arrays = load_cifar10(tmp_path, url=url, archive=spec, progress=False)
    assert_equal_arrays(arrays, expected)
    assert arrays.train_images.shape == (NUM_TRAIN, 3, 32, 32)
    assert arrays.train_images.dtype == torch.uint8 and arrays.test_labels.dtype == torch.int64
    assert sorted(os.listdir(tmp_path)) == sorted([ARCHIVE_NAME, CACHE_NAME])
    assert sha256_file(tmp_path / ARCHIVE_NAME) == spec.sha256
    # the second load reads the cache: no request, and it works without download
    assert_equal_arrays(load_cifar10(tmp_path, download=False, archive=spec), expected)
    assert len(server.requests) == 1
    with np.load(tmp_path / CACHE_NAME, allow_pickle=False) as cache:
        assert cache["train_images"].dtype == np.uint8
        assert cache["train_labels"].dtype == np.int64


def test_records_parse_label_byte_then_red_green_blue_planes(tmp_path):
    """A hand-made archive: record k has label k % 10, R[i, j] = 32i + j (mod 256),
    G = 255 − R and B = k, so a wrong channel or row/column order cannot pass."""
    plane = (np.arange(1024) % 256).astype(np.uint8)

    def record(k):
        return bytes([k % 10]) + plane.tobytes() + (255 - plane).tobytes() + bytes([k] * 1024)

    files = [b"".join(record(2 * i + r) for r in range(2)) for i in range(5)]
    data, _ = make_tar(
        [regular(name, content) for name, content in zip(TRAIN_MEMBERS, files)]
        + [regular(TEST_MEMBER, record(10))],
    )
    (tmp_path / "a.tar.gz").write_bytes(data)
    arrays = read_cifar10_archive(tmp_path / "a.tar.gz", num_train=10, num_test=1)
    red = torch.arange(1024).reshape(32, 32) % 256
    assert arrays.train_labels.tolist() == list(range(10))
    assert torch.equal(arrays.train_images[:, 0], red.expand(10, 32, 32).to(torch.uint8))
    assert torch.equal(arrays.train_images[:, 1], (255 - red).expand(10, 32, 32).to(torch.uint8))
    assert arrays.train_images[:, 2].flatten(1).tolist() == [[k] * 1024 for k in range(10)]
    assert arrays.test_labels.tolist() == [0] and int(arrays.test_images[0, 2, 5, 7]) == 10


def test_real_record_count_is_enforced_unless_given(archive, tmp_path):
    (tmp_path / ARCHIVE_NAME).write_bytes(archive[0])
    with pytest.raises(CIFAR10Error, match=r"data_batch_1.bin' has 614,600 bytes, expected "
                                           r"30,730,000 \(10,000 records"):
        read_cifar10_archive(tmp_path / ARCHIVE_NAME)


def test_resume_after_a_dropped_connection_within_one_call(server, archive, tmp_path):
    data, spec = archive
    server.drop_after, server.drops = 100_000, 1
    path = download_cifar10(tmp_path, url=server.serve(data), archive=spec, progress=False)
    assert [r[1] for r in server.requests] == [None, "bytes=100000-"]
    assert sha256_file(path) == spec.sha256 and os.listdir(tmp_path) == [ARCHIVE_NAME]


def test_resume_across_calls_keeps_the_partial_file(server, archive, tmp_path):
    data, spec = archive
    url = server.serve(data)
    server.drop_after, server.drops = 123_456, 1
    with pytest.raises(CIFAR10Error, match=r"1 attempts.*keeps the 123,456 bytes received; run"):
        download_cifar10(tmp_path, url=url, archive=spec, progress=False, max_attempts=1)
    assert (tmp_path / (ARCHIVE_NAME + ".part")).stat().st_size == 123_456
    path = download_cifar10(tmp_path, url=url, archive=spec, progress=False)
    assert server.requests[-1][1] == "bytes=123456-"
    assert sha256_file(path) == spec.sha256 and os.listdir(tmp_path) == [ARCHIVE_NAME]


def test_server_that_ignores_range_is_read_from_the_start(server, archive, tmp_path):
    data, spec = archive
    (tmp_path / (ARCHIVE_NAME + ".part")).write_bytes(b"\0" * 5000)  # a stale partial file
    server.ignore_range = True
    path = download_cifar10(tmp_path, url=server.serve(data), archive=spec, progress=False)
    assert server.requests[0][1] == "bytes=5000-"
    assert sha256_file(path) == spec.sha256


def test_checksum_mismatch_is_refused_before_anything_is_read(server, archive, tmp_path):
    data, spec = archive
    wrong = dataclasses.replace(spec, sha256="0" * 64)
    with pytest.raises(CIFAR10Error, match=r"SHA-256 .* expected 0{64}.*moved aside"):
        load_cifar10(tmp_path, url=server.serve(data), archive=wrong, progress=False)
    assert os.listdir(tmp_path) == [ARCHIVE_NAME + ".bad"]  # no archive, cache or extract


def test_truncated_download_is_detected(server, archive, tmp_path):
    data, spec = archive
    with pytest.raises(CIFAR10Error, match=r"has 3,[\d,]+ bytes, expected .*truncated"):
        load_cifar10(tmp_path, url=server.serve(data[:-1000]), archive=spec, progress=False)
    assert os.listdir(tmp_path) == [ARCHIVE_NAME + ".bad"]


def test_larger_download_is_cut_off_and_moved_aside(server, archive, tmp_path):
    data, spec = archive
    with pytest.raises(CIFAR10Error, match=r"larger than the expected.*moved aside"):
        download_cifar10(tmp_path, url=server.serve(data + b"x" * 2_000_000), archive=spec,
                         progress=False)
    assert os.listdir(tmp_path) == [ARCHIVE_NAME + ".bad"]


def test_http_error_names_the_url(server, archive, tmp_path):
    with pytest.raises(CIFAR10Error, match=r"missing.tar.gz failed: HTTP 404"):
        download_cifar10(tmp_path, url=server.base + "/missing.tar.gz", archive=archive[1],
                         progress=False)


def _traversal(entries):
    return entries + [regular("../evil", b"pwned")]


def _symlink(entries):
    link = tarfile.TarInfo(TRAIN_MEMBERS[0])
    link.type, link.linkname = tarfile.SYMTYPE, "/etc/passwd"
    return [(link, None) if info.name == TRAIN_MEMBERS[0] else (info, d) for info, d in entries]


def _extra(entries):
    return entries + [regular("cifar-10-batches-bin/extra.bin", b"\0" * RECORD_BYTES)]


def _wrong_size(entries):
    return [(info, d[:-RECORD_BYTES] if info.name == TRAIN_MEMBERS[1] else d)
            for info, d in entries]


def _missing(entries):
    return [(info, d) for info, d in entries if info.name != TEST_MEMBER]


def _duplicate(entries):
    return entries + [e for e in entries if e[0].name == TEST_MEMBER]


def _bad_label(entries):
    def relabel(d):
        return d[: 5 * RECORD_BYTES] + b"\x0a" + d[5 * RECORD_BYTES + 1:]

    return [(info, relabel(d) if info.name == TEST_MEMBER else d) for info, d in entries]


@pytest.mark.parametrize(
    "edit, message",
    [
        (_traversal, r"'\.\./evil' points outside the archive \(path traversal\)"),
        (_symlink, r"data_batch_1.bin' is a link \(to '/etc/passwd'\)"),
        (_extra, r"'cifar-10-batches-bin/extra.bin' is not one of the expected members"),
        (_wrong_size, r"data_batch_2.bin' has 611,527 bytes, expected 614,600"),
        (_missing, r"the members \['cifar-10-batches-bin/test_batch.bin'\] are missing"),
        (_duplicate, r"test_batch.bin' appears twice"),
        (_bad_label, r"test_batch.bin' has label 10 at record 5 \(not 0-9\)"),
    ],
)
def test_unsafe_or_unexpected_members_are_refused(server, archive, tmp_path, edit, message):
    data, spec = make_tar(edit(tar_entries(archive[0])))
    directory = tmp_path / "data"
    with pytest.raises(CIFAR10Error, match=message) as error:
        load_cifar10(directory, url=server.serve(data), archive=spec, progress=False)
    assert "delete it and download again, or check the mirror" in str(error.value)
    assert os.listdir(directory) == [ARCHIVE_NAME]  # verified archive kept; no cache, no extract
    assert os.listdir(tmp_path) == ["data"]


@pytest.mark.parametrize("damage", ["truncated", "garbled header"])
def test_unreadable_gzip_is_reported(archive, tmp_path, damage):
    data = archive[0]
    data = data[: len(data) // 2] if damage == "truncated" else b"\0" * 16 + data[16:]
    (tmp_path / ARCHIVE_NAME).write_bytes(data)
    spec = ArchiveSpec.of_file(tmp_path / ARCHIVE_NAME, NUM_TRAIN, NUM_TEST)
    with pytest.raises(CIFAR10Error, match=r"not a readable .tar.gz .*delete it"):
        load_cifar10(tmp_path, download=False, archive=spec)
    assert os.listdir(tmp_path) == [ARCHIVE_NAME]


def test_environment_overrides_directory_and_url(server, archive, tmp_path, monkeypatch):
    data, spec = archive
    monkeypatch.setenv("SFN_TEACH_DATA_DIR", str(tmp_path / "root"))
    monkeypatch.setenv("SFN_TEACH_CIFAR10_URL", server.serve(data, "/mirror/c.tar.gz"))
    path = download_cifar10(archive=spec, progress=False)
    assert path == tmp_path / "root" / "cifar10" / ARCHIVE_NAME
    assert server.requests == [("/mirror/c.tar.gz", None)]


@pytest.mark.parametrize("as_uri", [False, True])
def test_local_copy_by_path_or_file_url(archive, expected, tmp_path, as_uri):
    data, spec = archive
    source = tmp_path / "offline copy.tar.gz"
    source.write_bytes(data)
    url = source.as_uri() if as_uri else str(source)
    arrays = load_cifar10(tmp_path / "data", url=url, archive=spec, progress=False)
    assert_equal_arrays(arrays, expected)


def test_bad_archive_in_place_is_moved_aside_and_downloaded_again(server, archive, tmp_path):
    data, spec = archive
    (tmp_path / ARCHIVE_NAME).write_bytes(b"not an archive")
    with pytest.warns(RuntimeWarning, match=r"has 14 bytes.*Downloading it again"):
        path = download_cifar10(tmp_path, url=server.serve(data), archive=spec, progress=False)
    assert sha256_file(path) == spec.sha256
    assert (tmp_path / (ARCHIVE_NAME + ".bad")).read_bytes() == b"not an archive"


def test_unreadable_cache_is_rebuilt(server, archive, expected, tmp_path):
    data, spec = archive
    load_cifar10(tmp_path, url=server.serve(data), archive=spec, progress=False)
    (tmp_path / CACHE_NAME).write_bytes(b"garbage")
    with pytest.warns(RuntimeWarning, match="deleted the unreadable cache"):
        arrays = load_cifar10(tmp_path, download=False, archive=spec)
    assert_equal_arrays(arrays, expected)
    assert_equal_arrays(load_cifar10(tmp_path, download=False, archive=spec), expected)


def test_bad_archive_without_download_is_moved_aside(tmp_path, archive):
    (tmp_path / ARCHIVE_NAME).write_bytes(archive[0][:-1])
    with pytest.raises(CIFAR10Error, match=r"moved aside .*\.bad \(delete it\)\. Load with "
                                           r"download=True"):
        load_cifar10(tmp_path, download=False, archive=archive[1])
    assert os.listdir(tmp_path) == [ARCHIVE_NAME + ".bad"]


def test_missing_archive_without_download_says_what_to_do(tmp_path, archive):
    with pytest.raises(CIFAR10Error, match=r"does not exist: call with download=True"):
        load_cifar10(tmp_path, download=False, archive=archive[1])


def test_generated_archive_is_reproducible_and_counts_are_checked(archive, tmp_path):
    assert write_cifar10_archive(tmp_path / "again.tar.gz", NUM_TRAIN, NUM_TEST, SEED) == archive[1]
    with pytest.raises(ValueError, match="num_train must be a multiple of 5"):
        write_cifar10_archive(tmp_path / "x.tar.gz", num_train=12)
    assert not (tmp_path / "x.tar.gz").exists()


# --------------------------------------------------------------------------------------------
# Batch operations and the device loader (on the CPU here)
# --------------------------------------------------------------------------------------------


def test_normalize_maps_black_and_white_to_the_channel_statistics():
    images = torch.stack([torch.zeros(3, 2, 2), torch.full((3, 2, 2), 255.0)]).to(torch.uint8)
    out = normalize(images)
    mean, std = torch.tensor(MEAN).view(3, 1, 1), torch.tensor(STD).view(3, 1, 1)
    assert out.dtype == torch.float32
    torch.testing.assert_close(out[0], (-mean / std).expand(3, 2, 2))
    torch.testing.assert_close(out[1], ((1 - mean) / std).expand(3, 2, 2))
    with pytest.raises(ValueError, match="images must be uint8"):
        normalize(images.float())


def test_crop_and_flip_give_shifted_zero_padded_windows_possibly_mirrored():
    generator = torch.Generator().manual_seed(0)
    images = torch.randint(1, 256, (64, 3, 8, 8), generator=generator, dtype=torch.uint8)
    out = random_crop_flip(images, torch.Generator().manual_seed(1), padding=2)
    assert out.shape == images.shape and out.dtype == torch.uint8
    padded = F.pad(images, (2, 2, 2, 2))
    seen = set()
    for n in range(len(images)):
        matches = [
            (dy, dx, flip)
            for dy in range(5) for dx in range(5) for flip in (False, True)
            if torch.equal(out[n], (lambda w: w.flip(-1) if flip else w)(
                padded[n, :, dy:dy + 8, dx:dx + 8]))
        ]
        assert len(matches) == 1, n  # pixels are non-zero, so the window is unique
        seen.add(matches[0])
    assert {flip for _, _, flip in seen} == {False, True} and len(seen) > 20


def test_without_padding_the_flip_reverses_the_width_axis_exactly():
    images = torch.arange(2 * 3 * 4 * 5, dtype=torch.uint8).reshape(2, 3, 4, 5).repeat(16, 1, 1, 1)
    out = random_crop_flip(images, torch.Generator().manual_seed(0), padding=0)
    flipped = [torch.equal(o, i.flip(-1)) for o, i in zip(out, images)]
    kept = [torch.equal(o, i) for o, i in zip(out, images)]
    assert all(f != k for f, k in zip(flipped, kept)) and any(flipped) and any(kept)


def test_augmentation_is_deterministic_given_the_generator():
    images = torch.randint(0, 256, (10, 3, 32, 32), dtype=torch.uint8)
    first = random_crop_flip(images, torch.Generator().manual_seed(5))
    assert torch.equal(first, random_crop_flip(images, torch.Generator().manual_seed(5)))
    assert not torch.equal(first, random_crop_flip(images, torch.Generator().manual_seed(6)))


def _identified(n):
    """Images whose first pixel and label both equal the index (mod 256), to follow them."""
    images = torch.zeros(n, 3, 32, 32, dtype=torch.uint8)
    images[:, 0, 0, 0] = torch.arange(n) % 256
    return images, torch.arange(n)


def _arrays(num_train=1000, num_test=30):
    return CIFAR10Arrays(*_identified(num_train), *_identified(num_test))


def test_batches_shuffle_deterministically_per_seed_and_epoch():
    dataset = cifar10_dataset(_arrays(), validation_fraction=0.2)
    batches = Batches(dataset.train, 64, seed=1, augment=dataset.augment)
    assert batches.steps_per_epoch == 12 and dataset.augment is None  # 800 // 64
    epoch0 = torch.cat([batches[step][1] for step in range(12)])
    assert len(set(epoch0.tolist())) == 768  # distinct images; the last 32 are dropped
    again = Batches(dataset.train, 64, seed=1)
    assert all(torch.equal(again[step][1], batches[step][1]) for step in (3, 0, 11))
    epoch1 = torch.cat([batches[step][1] for step in range(12, 24)])
    other_seed = torch.cat([Batches(dataset.train, 64, seed=2)[step][1] for step in range(12)])
    assert not torch.equal(epoch0, epoch1) and not torch.equal(epoch0, other_seed)
    x, y = batches[5]  # the images follow their labels, normalised (float32, on the device)
    assert x.dtype == torch.float32 and dataset.train.inputs.dtype == torch.uint8
    torch.testing.assert_close(x, normalize(_identified(1000)[0][y]))


def test_augmentation_on_and_off_is_a_function_of_seed_and_step():
    arrays = CIFAR10Arrays(torch.randint(1, 256, (100, 3, 32, 32), dtype=torch.uint8),
                           torch.arange(100) % 10, *_identified(10))
    plain = cifar10_dataset(arrays)
    augmented = cifar10_dataset(arrays, augment=True)
    assert augmented.augment is random_crop_flip
    first = Batches(augmented.train, 16, seed=4, augment=augmented.augment)
    again = Batches(augmented.train, 16, seed=4, augment=augmented.augment)
    unaugmented = Batches(plain.train, 16, seed=4, augment=plain.augment)
    for step in (0, 3, 7):  # same labels as without augmentation, other pixels, reproducible
        (x, y), (x_again, y_again), (x_plain, y_plain) = first[step], again[step], unaugmented[step]
        assert torch.equal(y, y_plain) and torch.equal(y, y_again)
        assert torch.equal(x, x_again) and x.shape == x_plain.shape == (16, 3, 32, 32)
        assert not torch.equal(x, x_plain)
    assert not torch.equal(first[0][0], first[first.steps_per_epoch][0])  # fresh draws per step
    # evaluation chunks are never augmented
    (x, _), = augmented.val.chunks()
    torch.testing.assert_close(x, normalize(augmented.val.inputs))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_augmentation_from_a_cpu_generator_is_the_same_on_the_gpu():
    images = torch.randint(0, 256, (6, 3, 8, 8), dtype=torch.uint8)
    reference = random_crop_flip(images, torch.Generator().manual_seed(3), padding=2)
    out = random_crop_flip(images.cuda(), torch.Generator().manual_seed(3), padding=2)
    assert out.is_cuda and torch.equal(out.cpu(), reference)


def test_validation_split_is_disjoint_ten_percent_and_deterministic():
    train, validation = validation_split(1000, 0.1, seed=0)
    assert len(validation) == 100 and len(train) == 900
    assert sorted(torch.cat([train, validation]).tolist()) == list(range(1000))
    again = validation_split(1000, 0.1, seed=0)
    assert torch.equal(train, again[0]) and torch.equal(validation, again[1])
    assert not torch.equal(validation, validation_split(1000, 0.1, seed=1)[1])


def test_paper_setting_dataset_holds_out_validation_without_augmentation():
    arrays = _arrays()
    dataset = cifar10_dataset(arrays, split_seed=0, dtype=torch.float64)
    train_ids, validation_ids = dataset.train.targets, dataset.val.targets
    assert len(train_ids) == 900 and len(validation_ids) == 100 and len(dataset.test) == 30
    assert not set(train_ids.tolist()) & set(validation_ids.tolist())
    assert torch.equal(validation_ids, validation_split(1000, 0.1, seed=0)[1])
    assert dataset.augment is None and dataset.num_classes == 10
    chunks = list(dataset.val.chunks(40))
    assert [len(y) for _, y in chunks] == [40, 40, 20]
    for x, y in chunks:  # in order, exactly the normalised images, in the requested dtype
        torch.testing.assert_close(x, normalize(arrays.train_images[y], dtype=torch.float64))
    other = cifar10_dataset(arrays, split_seed=1)
    assert not torch.equal(other.val.targets, validation_ids)


def test_generated_archive_in_the_data_directory_goes_through_the_parser(tmp_path, monkeypatch):
    calls = []
    real = read_cifar10_archive

    def spy(path, *args):
        calls.append(path)
        return real(path, *args)

    monkeypatch.setattr("sfn_teach.cifar10.read_cifar10_archive", spy)
    arrays = load_generated_cifar10(tmp_path, 50, 20, progress=False)
    folder = tmp_path / "generated-50-20"
    assert calls == [folder / ARCHIVE_NAME] and (folder / CACHE_NAME).exists()
    assert_equal_arrays(arrays, synthetic_cifar10(50, 20, seed=0))
    assert_equal_arrays(load_generated_cifar10(tmp_path, 50, 20, progress=False), arrays)
    assert len(calls) == 1  # the second time from the cache


def test_synthetic_batch_has_cifar_shapes():
    generator = torch.Generator().manual_seed(0)
    images, labels = synthetic_cifar_batch(8, generator=generator)
    assert images.shape == (8, 3, 32, 32) and images.dtype == torch.float32
    assert labels.dtype == torch.int64 and 0 <= labels.min() and labels.max() <= 9
