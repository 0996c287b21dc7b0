"""CIFAR-10: download, verification and parsing through a real HTTP server; the device loader.

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
    MEAN,
    RECORD_BYTES,
    STD,
    TEST_MEMBER,
    TRAIN_MEMBERS,
    ArchiveSpec,
    CIFAR10Arrays,
    CIFAR10Error,
    DeviceLoader,
    cifar10_loaders,
    download_cifar10,
    load_cifar10,
    normalize,
    random_crop_flip,
    read_cifar10_archive,
    sha256_file,
    synthetic_cifar10,
    synthetic_cifar_batch,
    validation_split,
    write_cifar10_archive,
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


def test_loader_shuffles_deterministically_per_seed_and_epoch():
    images, labels = _identified(200)
    loader = DeviceLoader(images, labels, 64, shuffle=True, seed=1)
    assert len(loader) == 4
    epoch0 = torch.cat([y for _, y in loader.batches(0)])
    assert sorted(epoch0.tolist()) == list(range(200))
    assert torch.equal(epoch0, torch.cat([y for _, y in loader.batches(0)]))
    assert not torch.equal(epoch0, torch.cat([y for _, y in loader.batches(1)]))
    other = DeviceLoader(images, labels, 64, shuffle=True, seed=2)
    assert not torch.equal(epoch0, torch.cat([y for _, y in other.batches(0)]))
    # iter() walks through the epochs; the images follow their labels, normalised
    assert torch.equal(torch.cat([y for _, y in loader]), epoch0) and loader.epoch == 1
    x, y = next(iter(loader))
    torch.testing.assert_close(x, normalize(images[y]))
    assert loader.epoch == 2


def test_loader_order_drop_last_and_channels_last():
    images, labels = _identified(10)
    loader = DeviceLoader(images, labels, 4, channels_last=True)
    batches = list(loader)
    assert [y.tolist() for _, y in batches] == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9]]
    assert batches[0][0].is_contiguous(memory_format=torch.channels_last)
    assert len(DeviceLoader(images, labels, 4, drop_last=True)) == 2


def test_augmented_loader_is_deterministic_and_keeps_shapes():
    images = torch.randint(0, 256, (50, 3, 32, 32), dtype=torch.uint8)
    loader = DeviceLoader(images, torch.arange(50), 16, shuffle=True, augment=True, seed=4)
    first, again = list(loader.batches(0)), list(loader.batches(0))
    assert [x.shape for x, _ in first] == [(16, 3, 32, 32)] * 3 + [(2, 3, 32, 32)]
    assert all(x.dtype == torch.float32 for x, _ in first)
    assert all(torch.equal(a[0], b[0]) for a, b in zip(first, again))
    assert not all(torch.equal(x, normalize(images[y])) for x, y in first)


def test_validation_split_is_disjoint_ten_percent_and_deterministic():
    train, validation = validation_split(1000, 0.1, seed=0)
    assert len(validation) == 100 and len(train) == 900
    assert sorted(torch.cat([train, validation]).tolist()) == list(range(1000))
    again = validation_split(1000, 0.1, seed=0)
    assert torch.equal(train, again[0]) and torch.equal(validation, again[1])
    assert not torch.equal(validation, validation_split(1000, 0.1, seed=1)[1])


def test_paper_setting_loaders_hold_out_validation_without_augmentation():
    images, labels = _identified(1000)
    test_images, test_labels = _identified(30)
    arrays = CIFAR10Arrays(images, labels, test_images, test_labels)
    train, validation, test = cifar10_loaders(arrays, 128, eval_batch_size=50)
    train_ids = torch.cat([y for _, y in train])
    validation_ids = torch.cat([y for _, y in validation])
    assert len(train_ids) == 900 and len(validation_ids) == 100
    assert not set(train_ids.tolist()) & set(validation_ids.tolist())
    assert not train.augment and train.shuffle and not validation.shuffle
    assert [len(y) for _, y in test] == [30]
    for x, y in validation:  # in order, exactly the normalised images
        torch.testing.assert_close(x, normalize(images[y]))
    other_seed = cifar10_loaders(arrays, 128, eval_batch_size=50, seed=7)[1]
    assert torch.equal(torch.cat([y for _, y in other_seed]), validation_ids)  # fixed hold-out
    assert cifar10_loaders(arrays, 128, validation_fraction=0)[1] is None


def test_synthetic_batch_has_cifar_shapes():
    generator = torch.Generator().manual_seed(0)
    images, labels = synthetic_cifar_batch(8, generator=generator)
    assert images.shape == (8, 3, 32, 32) and images.dtype == torch.float32
    assert labels.dtype == torch.int64 and 0 <= labels.min() and labels.max() <= 9
