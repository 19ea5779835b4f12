"""Loaders of the real data: MNIST (10k JSON and IDX), FSDD log-mel features, AV-Digits pairing and splits.

Needs the real data (the ``data_root`` fixture fails when it is missing).
"""
import gzip
import json
import os
import shutil
import struct
import warnings
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch

torch.set_num_threads(1)

from mmdistill.config import DataConfig  # noqa: E402
from mmdistill.data import av_digits, build_data, fsdd, mnist, split_validation  # noqa: E402
from mmdistill.data.av_digits import load_av_digits  # noqa: E402
from mmdistill.data.fsdd import HELD_OUT_SPEAKER  # noqa: E402
from mmdistill.data.fsdd import list_recordings, log_mel_features  # noqa: E402
from mmdistill.data.mnist import load_mnist, read_idx  # noqa: E402
from mmdistill.errors import DataError  # noqa: E402


# --- helpers ------------------------------------------------------------------------------------
def write_idx(path: Path, array: np.ndarray) -> Path:
    """An unsigned-byte IDX file (gzipped when ``path`` ends in .gz)."""
    array = np.ascontiguousarray(array, dtype=np.uint8)
    raw = bytes([0, 0, 0x08, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape) + array.tobytes()
    if path.suffix == ".gz":
        with gzip.open(path, "wb", compresslevel=1) as f:
            f.write(raw)
    else:
        path.write_bytes(raw)
    return path


def to_bytes(images: np.ndarray) -> np.ndarray:
    return np.round(images * 255).astype(np.uint8)


@pytest.fixture
def cache(tmp_path, monkeypatch):
    """A fresh, empty feature cache for one test."""
    path = tmp_path / "cache"
    path.mkdir()
    monkeypatch.setenv("MMDISTILL_CACHE", str(path))
    return path


@pytest.fixture
def reuse_mnist(monkeypatch, mnist10k):
    """Let AV-Digits rebuilds reuse the session's MNIST arrays instead of re-parsing the JSON."""
    monkeypatch.setattr(av_digits, "load_mnist", lambda root, source: (*mnist10k, "json10k"))


# --- MNIST ----------------------------------------------------------------------------------------
def test_json10k_split_per_class(mnist10k):
    x_train, y_train, x_test, y_test = mnist10k
    assert x_train.shape == (8000, 28, 28) and x_test.shape == (2000, 28, 28)
    assert x_train.dtype == np.float32 and y_train.dtype == np.int64
    assert len(y_train) == 8000 and len(y_test) == 2000
    for x in (x_train, x_test):
        assert np.isfinite(x).all() and x.min() >= 0 and x.max() <= 1
        assert x.max() > 0.99  # really pixel intensities, not all zeros
    train_counts, test_counts = np.bincount(y_train, minlength=10), np.bincount(y_test, minlength=10)
    assert (train_counts > 0).all() and (test_counts > 0).all()
    for c in range(10):
        total = train_counts[c] + test_counts[c]
        assert train_counts[c] == round(0.8 * total)
    # images of a class are contiguous (one file per digit), labels 0..9 in order
    assert (np.diff(y_train) >= 0).all() and (np.diff(y_test) >= 0).all()


def test_idx_round_trip_of_the_real_images(tmp_path, mnist10k):
    x_train, y_train, x_test, y_test = mnist10k
    folder = tmp_path / "mnist"
    folder.mkdir()
    # a mix of gzipped and plain files
    write_idx(folder / "train-images-idx3-ubyte.gz", to_bytes(x_train))
    write_idx(folder / "train-labels-idx1-ubyte", y_train)
    write_idx(folder / "t10k-images-idx3-ubyte", to_bytes(x_test))
    write_idx(folder / "t10k-labels-idx1-ubyte.gz", y_test)
    a, b, c, d, source = load_mnist(tmp_path, source="idx")
    assert source == "idx"
    assert a.dtype == np.float32 and b.dtype == np.int64
    np.testing.assert_array_equal(a, to_bytes(x_train).astype(np.float32) / 255.0)
    np.testing.assert_array_equal(c, to_bytes(x_test).astype(np.float32) / 255.0)
    np.testing.assert_array_equal(b, y_train)
    np.testing.assert_array_equal(d, y_test)
    np.testing.assert_allclose(a, x_train, atol=0.5 / 255 + 1e-6)
    # auto prefers the IDX files when both layouts exist
    (tmp_path / "mnist10k").mkdir()
    (tmp_path / "mnist10k" / "0.json.gz").write_bytes(b"")
    assert load_mnist(tmp_path, source="auto")[-1] == "idx"


@pytest.fixture
def small_idx(tmp_path):
    """A complete, valid, tiny IDX layout (5 train, 3 test images), plain files."""
    folder = tmp_path / "mnist"
    folder.mkdir()
    rng = np.random.default_rng(0)
    write_idx(folder / "train-images-idx3-ubyte", rng.integers(0, 256, (5, 28, 28)))
    write_idx(folder / "train-labels-idx1-ubyte", np.arange(5))
    write_idx(folder / "t10k-images-idx3-ubyte", rng.integers(0, 256, (3, 28, 28)))
    write_idx(folder / "t10k-labels-idx1-ubyte", np.arange(3))
    return folder


def test_small_idx_layout_loads(small_idx):
    a, b, c, d, _ = load_mnist(small_idx.parent, source="idx")
    assert a.shape == (5, 28, 28) and c.shape == (3, 28, 28)
    assert b.tolist() == [0, 1, 2, 3, 4] and d.tolist() == [0, 1, 2]


def _bad_magic(path):
    raw = bytearray(path.read_bytes())
    raw[2] = 0x09  # signed byte, not unsigned
    path.write_bytes(bytes(raw))


def _truncate(path):
    path.write_bytes(path.read_bytes()[:-10])


def _label_11(path):
    write_idx(path, np.array([0, 1, 11]))


@pytest.mark.parametrize("name, corrupt, message", [
    ("train-images-idx3-ubyte", _bad_magic, "bad magic"),
    ("t10k-images-idx3-ubyte", _truncate, "header promises"),
    ("t10k-labels-idx1-ubyte", _label_11, "unknown label 11"),
])
def test_idx_errors_name_the_file(small_idx, name, corrupt, message):
    corrupt(small_idx / name)
    with pytest.raises(DataError) as err:
        load_mnist(small_idx.parent, source="idx")
    assert str(small_idx / name) in str(err.value)
    assert message in str(err.value)


def test_idx_truncated_gzip_names_the_file(small_idx):
    path = small_idx / "train-labels-idx1-ubyte"
    gz = write_idx(small_idx / "train-labels-idx1-ubyte.gz", read_idx(path))
    path.unlink()
    gz.write_bytes(gz.read_bytes()[:-8])
    with pytest.raises(DataError, match="cannot read") as err:
        load_mnist(small_idx.parent, source="idx")
    assert str(gz) in str(err.value)


def official_like_training_files(folder: Path, images: np.ndarray, labels: np.ndarray, extra: int = 300) -> None:
    """IDX training files whose first 10,000 images are ``images`` (the subset, grouped by digit)
    interleaved in a seeded order that keeps each digit's images in order, followed by ``extra``
    other images: what the official file looks like to the mnist10k rule."""
    rng = np.random.default_rng(0)
    sequence = rng.permutation(labels)  # which digit comes next; each digit's images stay in order
    order = np.concatenate([np.flatnonzero(labels == d) for d in range(10)])
    position = {d: iter(np.flatnonzero(labels == d)) for d in range(10)}
    picked = np.array([next(position[d]) for d in sequence])
    assert sorted(picked) == sorted(order)
    more = rng.integers(0, 256, size=(extra, 28, 28))
    folder.mkdir(parents=True)
    write_idx(folder / "train-images-idx3-ubyte.gz", np.concatenate([to_bytes(images[picked]), more]))
    write_idx(folder / "train-labels-idx1-ubyte", np.concatenate([sequence, rng.integers(0, 10, extra)]))


def test_mnist10k_checksum_and_rule(tmp_path, data_root):
    """The shipped subset matches its stated checksum; the rule applied to training files that
    hold it (interleaved, then more images) derives exactly the same arrays, and the published
    JSON layout written from them reads back identical."""
    images, labels = mnist.read_json10k(data_root / "mnist10k")
    assert mnist.mnist10k_digest(images, labels) == mnist.MNIST10K_SHA256
    # the JSON holds p / 255 rounded to 3 decimals: bytes recoverable, floats exactly the rule's
    np.testing.assert_array_equal(np.round(to_bytes(images) / 255, 3).astype(np.float32), images)
    official_like_training_files(tmp_path / "mnist", images, labels)
    derived = mnist.derive_mnist10k(tmp_path / "mnist")
    np.testing.assert_array_equal(derived[0], images)
    np.testing.assert_array_equal(derived[1], labels)
    # without mnist10k/, source json10k derives the subset from the IDX files: same split
    got = load_mnist(tmp_path, source="json10k")
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the shipped subset passes its checksum silently
        want = load_mnist(data_root, source="json10k")
    assert got[-1] == want[-1] == "json10k"
    for a, b in zip(got[:4], want[:4]):
        np.testing.assert_array_equal(a, b)
    mnist.write_mnist10k(*derived, tmp_path / "written" / "mnist10k")
    for a, b in zip(load_mnist(tmp_path / "written", source="json10k")[:4], want[:4]):
        np.testing.assert_array_equal(a, b)


def test_not_the_mnist10k_subset_is_flagged(tmp_path, data_root):
    images, labels = mnist.read_json10k(data_root / "mnist10k")
    changed = images.copy()
    changed[1234, 10, 10] = 0.5 if changed[1234, 10, 10] != 0.5 else 0.4
    mnist.write_mnist10k(changed, labels, tmp_path / "mnist10k")
    with pytest.warns(UserWarning, match=r"mnist10k: not the mnist10k subset \(SHA-256 [0-9a-f]{64}, expected "
                                         + mnist.MNIST10K_SHA256):
        load_mnist(tmp_path, source="json10k")
    official_like_training_files(tmp_path / "other" / "mnist", changed, labels)
    with pytest.raises(DataError, match="mnist10k derived by its rule.*not the mnist10k subset"):
        mnist.derive_mnist10k(tmp_path / "other" / "mnist")


def test_truncated_json_gz_names_the_file(tmp_path, data_root):
    folder = tmp_path / "mnist10k"
    folder.mkdir()
    for digit in range(1, 10):
        os.symlink(data_root / "mnist10k" / f"{digit}.json.gz", folder / f"{digit}.json.gz")
    raw = (data_root / "mnist10k" / "0.json.gz").read_bytes()
    (folder / "0.json.gz").write_bytes(raw[: len(raw) // 2])
    with pytest.raises(DataError) as err:
        load_mnist(tmp_path, source="json10k")
    assert str(folder / "0.json.gz") in str(err.value)


def test_json_missing_digit_file_names_it(tmp_path):
    folder = tmp_path / "mnist10k"
    folder.mkdir()
    with gzip.open(folder / "0.json.gz", "wt") as f:
        json.dump({"data": [0.5] * 784}, f)
    with pytest.raises(DataError) as err:
        load_mnist(tmp_path, source="json10k")
    assert str(folder / "1.json.gz") in str(err.value)


# --- FSDD -----------------------------------------------------------------------------------------
def test_list_recordings(data_root):
    recordings = list_recordings(data_root)
    assert len(recordings) == 3000
    assert sorted({r.digit for r in recordings}) == list(range(10))
    speakers = Counter(r.speaker for r in recordings)
    assert len(speakers) == 6 and set(speakers.values()) == {500}
    assert HELD_OUT_SPEAKER in speakers
    assert {r.index for r in recordings} == set(range(50))
    assert all(r.path.name == f"{r.digit}_{r.speaker}_{r.index}.wav" for r in recordings)


def test_log_mel_shape_cache_hit_and_parameters(data_root, cache, monkeypatch):
    recordings = list_recordings(data_root)[::300]  # 10 recordings, one per digit
    features = log_mel_features(recordings)
    assert features.shape == (10, 1, 32, 32) and features.dtype == torch.float32
    assert torch.isfinite(features).all()
    assert features.std() > 0
    files = sorted(cache.glob("fsdd-logmel-*.pt"))
    assert len(files) == 1 and not list(cache.glob("*.part"))

    def no_decoding(*args, **kwargs):
        raise AssertionError("a cache hit must not decode audio")

    with monkeypatch.context() as m:
        m.setattr(fsdd, "read_wave", no_decoding)
        assert torch.equal(log_mel_features(recordings), features)
        # the noise seed only matters with noise: still the same cache entry
        assert torch.equal(log_mel_features(recordings, noise_seed=5), features)
    assert sorted(cache.glob("fsdd-logmel-*.pt")) == files

    noisy = log_mel_features(recordings, snr_db=10.0)
    assert len(list(cache.glob("fsdd-logmel-*.pt"))) == 2
    assert noisy.shape == features.shape and torch.isfinite(noisy).all()
    assert not torch.allclose(noisy, features)
    # deterministic noise, and another noise seed is another cache entry
    assert torch.equal(log_mel_features(recordings, snr_db=10.0), noisy)
    other = log_mel_features(recordings, snr_db=10.0, noise_seed=1)
    assert len(list(cache.glob("fsdd-logmel-*.pt"))) == 3
    assert not torch.equal(other, noisy)


def _fsdd_root(tmp_path, data_root, names):
    folder = tmp_path / "root" / "fsdd" / "recordings"
    folder.mkdir(parents=True)
    for name in names:
        shutil.copy(data_root / "fsdd" / "recordings" / name, folder / name)
    return tmp_path / "root", folder


def test_corrupt_wav_names_the_file(tmp_path, data_root, cache):
    root, folder = _fsdd_root(tmp_path, data_root, ["0_george_0.wav", "1_jackson_7.wav", "9_theo_49.wav"])
    bad = folder / "3_x_1.wav"
    bad.write_bytes(np.random.default_rng(0).integers(0, 256, 4000, dtype=np.uint8).tobytes())
    recordings = list_recordings(root)
    assert len(recordings) == 4
    with pytest.raises(DataError) as err:
        log_mel_features(recordings)
    assert str(bad) in str(err.value)
    assert not list(cache.iterdir())  # nothing half-written


def test_unknown_label_names_the_file(tmp_path, data_root):
    root, folder = _fsdd_root(tmp_path, data_root, ["0_george_0.wav"])
    shutil.copy(folder / "0_george_0.wav", folder / "x_george_1.wav")
    with pytest.raises(DataError, match="unknown label") as err:
        list_recordings(root)
    assert str(folder / "x_george_1.wav") in str(err.value)


# --- AV-Digits ------------------------------------------------------------------------------------
def test_av_digits_official_split(av_clean, data_root):
    train, test, info = av_clean
    recordings = list_recordings(data_root)
    assert info["train_recordings"] == 2700 and info["test_recordings"] == 300
    assert len(train) == 4 * 2700 and len(test) == 4 * 300
    assert info["mnist"] == "json10k" and info["level"] == "clean"
    for ds, is_test in ((train, False), (test, True)):
        assert ds.modalities["image"].shape[1:] == (1, 28, 28)
        assert ds.modalities["audio"].shape[1:] == (1, 32, 32)
        assert all(torch.isfinite(t).all() for t in ds.modalities.values())
        groups = Counter(ds.groups.tolist())
        assert set(groups.values()) == {4}
        assert all((recordings[g].index <= 4) == is_test for g in groups)
        # each pair's label is its recording's digit
        assert ds.labels.tolist() == [recordings[g].digit for g in ds.groups.tolist()]
    assert not set(train.groups.tolist()) & set(test.groups.tolist())
    # standardised with the training split's statistics
    for m in ("image", "audio"):
        assert abs(float(train.modalities[m].mean())) < 0.05
        assert abs(float(train.modalities[m].std()) - 1) < 0.05


def _source_labels(images: np.ndarray, labels: np.ndarray, mean: float, std: float) -> dict:
    """{bytes of a standardised source image: its label}, standardised as the loader does."""
    standard = (images - mean) / std
    table = {}
    for img, y in zip(standard, labels):
        key = img.tobytes()
        assert table.setdefault(key, int(y)) == int(y)
        table[key] = int(y)
    return table


def test_av_digits_pairs_images_of_the_recordings_class(av_clean, mnist10k):
    train, test, _ = av_clean
    x_train, y_train, x_test, y_test = mnist10k
    mean, std = float(x_train.mean()), float(x_train.std())
    for ds, images, labels in ((train, x_train, y_train), (test, x_test, y_test)):
        table = _source_labels(images, labels, mean, std)
        paired = ds.modalities["image"][:, 0].numpy()
        image_labels = [table.get(img.tobytes(), -1) for img in paired]
        assert -1 not in image_labels, "a paired image is not an image of its split"
        assert image_labels == ds.labels.tolist()
        # the 4 images of a recording are distinct, its 4 audio copies identical
        order = torch.argsort(ds.groups, stable=True)
        imgs = ds.modalities["image"][order].reshape(-1, 4, 28 * 28)
        auds = ds.modalities["audio"][order].reshape(-1, 4, 32 * 32)
        assert all(len({row.numpy().tobytes() for row in rec}) == 4 for rec in imgs[:200])
        assert torch.equal(auds, auds[:, :1].expand_as(auds))


def test_av_digits_pairing_is_seeded(av_clean, data_root, reuse_mnist):
    train, test, _ = av_clean
    again_train, again_test, _ = load_av_digits(data_root, level="clean", seed=0, mnist_source="json10k")
    for a, b in ((train, again_train), (test, again_test)):
        assert torch.equal(a.modalities["image"], b.modalities["image"])
        assert torch.equal(a.modalities["audio"], b.modalities["audio"])
        assert torch.equal(a.labels, b.labels)
    other_train, _, _ = load_av_digits(data_root, level="clean", seed=1, mnist_source="json10k")
    assert torch.equal(other_train.labels, train.labels)
    assert torch.equal(other_train.modalities["audio"], train.modalities["audio"])
    same = (other_train.modalities["image"] == train.modalities["image"]).flatten(1).all(1)
    assert same.float().mean() < 0.1


def test_av_digits_unseen_speaker_holds_out_one_speaker(data_root, reuse_mnist):
    recordings = list_recordings(data_root)
    train, test, info = load_av_digits(data_root, split="unseen-speaker", level="clean", mnist_source="json10k")
    assert {recordings[g].speaker for g in test.groups.tolist()} == {HELD_OUT_SPEAKER}
    train_speakers = {recordings[g].speaker for g in train.groups.tolist()}
    assert HELD_OUT_SPEAKER not in train_speakers and len(train_speakers) == 5
    assert info["test_recordings"] == 500 and info["train_recordings"] == 2500
    assert len(test) == 2000


def test_av_digits_validation_split_by_recording(av_clean):
    train, _, _ = av_clean
    fit, val = split_validation(train, 0.1, seed=0)
    fit_groups, val_groups = set(fit.groups.tolist()), set(val.groups.tolist())
    assert not fit_groups & val_groups
    assert fit_groups | val_groups == set(train.groups.tolist())
    assert len(val_groups) == 270 and len(val) == 4 * 270  # 10% of each class's 270 recordings
    assert Counter(val.labels.tolist()) == {c: 4 * 27 for c in range(10)}


def test_av_digits_through_build_data(data_root, reuse_mnist):
    cfg = DataConfig(name="av_digits", root=str(data_root), level="clean", mnist_source="json10k")
    data = build_data(cfg, seed=0, val_fraction=0.1)
    assert data.info["train_samples"] + data.info["val_samples"] == 10800
    assert data.info["test_samples"] == 1200
    assert not set(data.train.groups.tolist()) & set(data.val.groups.tolist())
    assert {m: s.shape for m, s in data.specs.items()} == {"image": (1, 28, 28), "audio": (1, 32, 32)}
    assert data.num_classes == 10


@pytest.fixture
def tiny_root(tmp_path, data_root, mnist10k):
    """7 recordings per digit of one speaker (5 test, 2 train) and 25 images per digit (20 train, 5 test)."""
    root = tmp_path / "tiny"
    folder = root / "fsdd" / "recordings"
    folder.mkdir(parents=True)
    for digit in range(10):
        for index in range(7):
            name = f"{digit}_jackson_{index}.wav"
            os.symlink(data_root / "fsdd" / "recordings" / name, folder / name)
    (root / "mnist10k").mkdir()
    x_train, y_train = mnist10k[0], mnist10k[1]
    for digit in range(10):
        images = x_train[y_train == digit][:25]
        with gzip.open(root / "mnist10k" / f"{digit}.json.gz", "wt", compresslevel=1) as f:
            json.dump({"data": images.reshape(-1).tolist()}, f)
    return root


def test_av_digits_hard_level_degrades_both_modalities(tiny_root, cache):
    clean_train, clean_test, _ = load_av_digits(tiny_root, level="clean", mnist_source="json10k")
    hard_train, hard_test, info = load_av_digits(tiny_root, level="hard", mnist_source="json10k")
    assert info["level"] == "hard" and info["audio_snr_db"] == 0.0
    assert 0 < info["pca_components"] < 784 and 0 < info["image_energy_kept"] < 1
    assert len(clean_train) == len(hard_train) == 4 * 20 and len(hard_test) == 4 * 50
    for clean, hard in ((clean_train, hard_train), (clean_test, hard_test)):
        assert torch.equal(clean.labels, hard.labels) and torch.equal(clean.groups, hard.groups)
        for m in ("image", "audio"):
            assert torch.isfinite(hard.modalities[m]).all()
            diff = (clean.modalities[m] - hard.modalities[m]).flatten(1).abs().amax(1)
            assert (diff > 0.1).all(), f"{m}: some hard samples equal their clean version"
    # deterministic
    again, _, _ = load_av_digits(tiny_root, level="hard", mnist_source="json10k")
    assert torch.equal(again.modalities["audio"], hard_train.modalities["audio"])
    assert torch.equal(again.modalities["image"], hard_train.modalities["image"])
