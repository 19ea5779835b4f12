"""Checksummed downloads (with file:// URLs, no network) and MNIST's download fallback."""
import gzip
import hashlib
import struct

import numpy as np
import pytest
import torch

torch.set_num_threads(1)

from mmdistill.data import mnist  # noqa: E402
from mmdistill.data.root import download  # noqa: E402
from mmdistill.errors import DataError  # noqa: E402

HINT = "point MMDISTILL_DATA at a folder that has it"


def md5(data: bytes) -> str:
    return hashlib.md5(data).hexdigest()


@pytest.fixture
def source(tmp_path):
    path = tmp_path / "server" / "blob.bin"
    path.parent.mkdir()
    path.write_bytes(b"some dataset bytes\n" * 100)
    return path


def leftovers(folder):
    return [p.name for p in folder.iterdir()] if folder.exists() else []


def test_checksum_ok_puts_the_file_in_place(tmp_path, source):
    dest = tmp_path / "data" / "sub" / "blob.bin"
    data = source.read_bytes()
    out = download([source.as_uri()], dest, md5=md5(data), sha256=hashlib.sha256(data).hexdigest(),
                   dataset="Blob", hint=HINT)
    assert out == dest and dest.read_bytes() == data
    assert leftovers(dest.parent) == ["blob.bin"]  # no .part file


def test_first_unreachable_url_falls_through_to_the_next(tmp_path, source):
    dest = tmp_path / "data" / "blob.bin"
    urls = [(tmp_path / "nowhere" / "blob.bin").as_uri(), source.as_uri()]
    download(urls, dest, md5=md5(source.read_bytes()), dataset="Blob", hint=HINT)
    assert dest.read_bytes() == source.read_bytes()
    assert leftovers(dest.parent) == ["blob.bin"]


@pytest.mark.parametrize("kind", ["md5", "sha256"])
def test_wrong_checksum_leaves_nothing_behind(tmp_path, source, kind):
    dest = tmp_path / "data" / "blob.bin"
    with pytest.raises(DataError, match=f"Blob: .*{kind} checksum"):
        download([source.as_uri()], dest, **{kind: "0" * (32 if kind == "md5" else 64)}, dataset="Blob", hint=HINT)
    assert not dest.exists()
    assert leftovers(dest.parent) == []


def test_wrong_checksum_keeps_an_existing_file(tmp_path, source):
    dest = tmp_path / "data" / "blob.bin"
    dest.parent.mkdir()
    dest.write_bytes(b"old")
    with pytest.raises(DataError):
        download([source.as_uri()], dest, md5="0" * 32, dataset="Blob", hint=HINT)
    assert dest.read_bytes() == b"old"
    assert leftovers(dest.parent) == ["blob.bin"]


@pytest.mark.parametrize("url", ["file:///nonexistent/mmdistill/blob.bin", "http://127.0.0.1:9/blob.bin"])
def test_unreachable_url_gives_the_hint(tmp_path, url):
    dest = tmp_path / "data" / "blob.bin"
    with pytest.raises(DataError) as err:
        download([url], dest, md5="0" * 32, dataset="Blob", hint=HINT)
    message = str(err.value)
    assert HINT in message and url in message and "Blob is not under the data root" in message
    assert not dest.exists() and leftovers(dest.parent) == []


# --- MNIST downloads its IDX files when the data root has neither layout ---------------------------
def idx_bytes(array: np.ndarray) -> bytes:
    array = np.ascontiguousarray(array, dtype=np.uint8)
    return bytes([0, 0, 0x08, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape) + array.tobytes()


@pytest.fixture
def mirror(tmp_path, monkeypatch):
    """A file:// mirror of four small gzipped IDX files, with their MD5s patched into IDX_FILES."""
    folder = tmp_path / "mirror"
    folder.mkdir()
    rng = np.random.default_rng(0)
    arrays = {"train-images-idx3-ubyte": rng.integers(0, 256, (12, 28, 28)),
              "train-labels-idx1-ubyte": np.arange(12) % 10,
              "t10k-images-idx3-ubyte": rng.integers(0, 256, (4, 28, 28)),
              "t10k-labels-idx1-ubyte": np.array([3, 1, 4, 1])}
    md5s = {}
    for name, array in arrays.items():
        blob = gzip.compress(idx_bytes(array), mtime=0)
        (folder / f"{name}.gz").write_bytes(blob)
        md5s[name] = md5(blob)
    assert set(md5s) == set(mnist.IDX_FILES)
    monkeypatch.setattr(mnist, "IDX_FILES", md5s)
    unreachable = (tmp_path / "offline").as_uri() + "/"
    monkeypatch.setattr(mnist, "MIRRORS", [unreachable, folder.as_uri() + "/"])
    return arrays


def test_load_mnist_downloads_into_an_empty_root(tmp_path, mirror):
    root = tmp_path / "root"
    root.mkdir()
    x_train, y_train, x_test, y_test, source = mnist.load_mnist(root)
    assert source == "idx"
    np.testing.assert_array_equal(x_train, mirror["train-images-idx3-ubyte"].astype(np.float32) / 255.0)
    np.testing.assert_array_equal(y_train, mirror["train-labels-idx1-ubyte"])
    np.testing.assert_array_equal(x_test, mirror["t10k-images-idx3-ubyte"].astype(np.float32) / 255.0)
    np.testing.assert_array_equal(y_test, [3, 1, 4, 1])
    assert sorted(p.name for p in (root / "mnist").iterdir()) == sorted(f"{n}.gz" for n in mnist.IDX_FILES)
    # the second load reads the downloaded files, without the mirror
    (tmp_path / "mirror" / "train-images-idx3-ubyte.gz").unlink()
    np.testing.assert_array_equal(mnist.load_mnist(root, source="idx")[0], x_train)


def test_load_mnist_rejects_a_corrupt_mirror(tmp_path, mirror, monkeypatch):
    monkeypatch.setitem(mnist.IDX_FILES, "t10k-labels-idx1-ubyte", "0" * 32)
    root = tmp_path / "root"
    with pytest.raises(DataError, match="MNIST: .*t10k-labels-idx1-ubyte.gz does not match its md5"):
        mnist.load_mnist(root, source="idx")
    assert not (root / "mnist" / "t10k-labels-idx1-ubyte.gz").exists()
    assert not list((root / "mnist").glob("*.part"))


def test_load_mnist_offline_gives_the_hint(tmp_path, monkeypatch):
    monkeypatch.setattr(mnist, "MIRRORS", [(tmp_path / "offline").as_uri() + "/"])
    with pytest.raises(DataError) as err:
        mnist.load_mnist(tmp_path / "root")
    assert mnist.HINT in str(err.value) and "MNIST is not under the data root" in str(err.value)
