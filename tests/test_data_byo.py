"""Bring-your-own data: the ``npz`` and ``manifest`` datasets, on real MNIST/FSDD files and on bad data."""
import csv
import functools
import gzip
import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import soundfile
import torch

torch.set_num_threads(1)

from mmdistill.data import DATASETS, build_data, parse_options  # noqa: E402
from mmdistill.data.fsdd import read_wave  # noqa: E402
from mmdistill.data.transforms import LogMel, LogMelParams, fix_length  # noqa: E402
from mmdistill.errors import ConfigError, DataError  # noqa: E402

REPO = Path(__file__).resolve().parents[1]


def data_dir() -> Path:
    """The real data (MNIST 10k JSON, FSDD WAVs): $MMDISTILL_DATA, else ../shared/data from the repo."""
    env = os.environ.get("MMDISTILL_DATA")
    root = Path(env).expanduser() if env else REPO.parent / "shared" / "data"
    if not (root / "mnist10k").is_dir() or not (root / "fsdd" / "recordings").is_dir():
        pytest.fail(f"real data not found: {root} must hold mnist10k/ and fsdd/recordings/ "
                    "(set MMDISTILL_DATA to the folder holding them)")
    return root


@functools.lru_cache(maxsize=None)
def mnist(digit: int, count: int) -> np.ndarray:
    """The first ``count`` MNIST images of ``digit`` as uint8 [count, 28, 28]."""
    with gzip.open(data_dir() / "mnist10k" / f"{digit}.json.gz", "rt") as f:
        flat = np.asarray(json.load(f)["data"][: count * 784], dtype=np.float32)
    return np.round(flat.reshape(count, 28, 28) * 255).astype(np.uint8)


def build(name, root, seed=0, **options):
    return DATASETS.get(name)(Path(root), parse_options(name, options), seed)


def write_csv(path: Path, header, rows):
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(header)
        writer.writerows(rows)
    return path


def write_png(path: Path, array: np.ndarray):
    from PIL import Image

    Image.fromarray(array).save(path)


# --- npz ---------------------------------------------------------------------------------------
def mnist_npz(tmp_path: Path) -> tuple[Path, dict]:
    images = np.concatenate([mnist(3, 25), mnist(7, 25)]).astype(np.float32) / 255.0  # [50, 28, 28]
    labels = np.array(["three"] * 25 + ["seven"] * 25)
    feat = np.stack([images.mean(axis=2)[:, ::2], images.std(axis=1)[:, ::2]], axis=1).reshape(50, -1)  # [50, 28]
    present_feat = np.ones(50, dtype=bool)
    present_feat[[4, 30]] = False
    feat[[4, 30]] = np.nan  # values of absent samples are ignored
    arrays = dict(image=images, feat=feat, label=labels, present_feat=present_feat)
    path = tmp_path / "mnist.npz"
    np.savez_compressed(path, **arrays)
    return path, arrays


def test_npz_round_trip_real_mnist(tmp_path):
    path, arrays = mnist_npz(tmp_path)
    train, test, info = build("npz", tmp_path, path="mnist.npz")  # relative to the data root
    assert len(train) == 40 and len(test) == 10
    assert info["classes"] == ["seven", "three"] and train.num_classes == test.num_classes == 2
    assert train.specs["image"].shape == (28, 28) and train.specs["image"].kind == "image"
    assert train.specs["feat"].shape == (28,) and train.specs["feat"].kind == "vector"
    # stratified: 5 test samples of each class
    assert torch.bincount(test.labels, minlength=2).tolist() == [5, 5]
    # every sample comes back intact, with its label and presence
    both = torch.cat([train.modalities["image"], test.modalities["image"]])
    labels = torch.cat([train.labels, test.labels])
    present = torch.cat([train.present["feat"], test.present["feat"]])
    feat = torch.cat([train.modalities["feat"], test.modalities["feat"]])
    original = torch.from_numpy(arrays["image"]).reshape(50, -1)
    for row, label, p, f in zip(both.reshape(len(both), -1), labels, present, feat):
        i = int((original == row).all(dim=1).nonzero()[0])
        assert int(label) == (1 if i < 25 else 0)
        assert bool(p) == (i not in (4, 30))
        if p:
            assert torch.equal(f, torch.from_numpy(arrays["feat"][i]))
        else:
            assert not f.any()
    assert info["modalities"]["feat"]["present"] == 48
    # the split is seeded
    again, _, _ = build("npz", tmp_path, path=str(path))
    other, _, _ = build("npz", tmp_path, seed=1, path=str(path))
    assert torch.equal(again.modalities["image"], train.modalities["image"])
    assert not torch.equal(other.modalities["image"], train.modalities["image"])


def test_npz_split_array_kinds_subset_and_build_data(tmp_path):
    n = 12
    rng = np.random.default_rng(0)
    np.savez(tmp_path / "d.npz", img=rng.random((n, 3, 8, 8)), seq=rng.random((n, 5, 4)), vec=rng.random((n, 6)),
             label=np.arange(n) % 4, split=np.array(["train"] * 9 + ["test"] * 3))
    train, test, info = build("npz", tmp_path, path="d.npz", modalities=["img", "seq"], kinds={"seq": "audio"})
    assert set(train.modalities) == {"img", "seq"} and len(train) == 9 and len(test) == 3
    assert train.specs["img"].kind == "image" and train.specs["seq"].kind == "audio"
    assert train.labels.tolist() == [0, 1, 2, 3, 0, 1, 2, 3, 0] and test.num_classes == 4
    assert info["split"] == "file" and "classes" not in info

    class Cfg:
        name, root, options = "npz", str(tmp_path), {"path": "d.npz"}

    splits = build_data(Cfg(), seed=0)
    assert splits.specs["seq"].kind == "sequence" and splits.specs["vec"].kind == "vector"
    with pytest.raises(ConfigError, match="bogus"):
        parse_options("npz", {"path": "d.npz", "bogus": 1})


def npz_error(tmp_path, **arrays) -> str:
    np.savez(tmp_path / "bad.npz", **arrays)
    with pytest.raises(DataError) as err:
        build("npz", tmp_path, path="bad.npz")
    message = str(err.value)
    assert "bad.npz" in message and "\n" not in message
    return message


def test_npz_not_an_archive(tmp_path):
    (tmp_path / "bad.npz").write_bytes(b"this is not a zip file at all")
    with pytest.raises(DataError, match=r"bad\.npz: not a valid \.npz"):
        build("npz", tmp_path, path="bad.npz")
    np.save(tmp_path / "single.npy", np.zeros(3))
    shutil.move(tmp_path / "single.npy", tmp_path / "bad.npz")
    with pytest.raises(DataError, match=r"bad\.npz: not a valid \.npz"):
        build("npz", tmp_path, path="bad.npz")
    with pytest.raises(DataError, match=r"nothere\.npz: no such file"):
        build("npz", tmp_path, path="nothere.npz")


def test_npz_missing_label(tmp_path):
    assert "no 'label' array" in npz_error(tmp_path, x=np.zeros((3, 2)))


def test_npz_length_mismatch_names_the_array(tmp_path):
    message = npz_error(tmp_path, x=np.zeros((4, 2)), feat=np.zeros((3, 2)), label=np.arange(4))
    assert "array 'feat' has 3 samples but 'label' has 4" in message
    message = npz_error(tmp_path, x=np.zeros((4, 2)), present_x=np.ones(3, bool), label=np.arange(4))
    assert "'present_x'" in message


@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_npz_nan_names_array_and_sample(tmp_path, bad):
    x = np.zeros((5, 2))
    x[3, 1] = bad
    assert "array 'x' sample 3 has NaN or infinite values" in npz_error(tmp_path, x=x, label=np.arange(5))


def test_npz_unknown_split_value(tmp_path):
    message = npz_error(tmp_path, x=np.zeros((3, 2)), label=np.arange(3), split=np.array(["train", "test", "valid"]))
    assert "array 'split' sample 2: unknown split value 'valid'" in message


@pytest.mark.parametrize("split", [np.array(["train", "val", "test", "TRAIN ", "val", "test"] * 4),
                                   np.array([0, 1, 2, 0, 1, 2] * 4, dtype=np.int8)])
def test_npz_and_manifest_split_marks_validation(tmp_path, split):
    """The split grammar of every format: train/val/test or 0/1/2; val samples are the validation set."""
    from mmdistill.config import DataConfig

    n = len(split)
    np.savez(tmp_path / "d.npz", x=np.arange(n * 2, dtype=np.float32).reshape(n, 2), label=np.arange(n) % 2,
             split=split)
    for i in range(n):
        np.save(tmp_path / f"f{i}.npy", np.array([i, 0], dtype=np.float32))
    write_csv(tmp_path / "m.csv", ["feat", "label", "split"],
              [[f"f{i}.npy", i % 2, str(split[i])] for i in range(n)])
    for cfg in (DataConfig(name="npz", path="d.npz", root=str(tmp_path)),
                DataConfig(name="manifest", path="m.csv", root=str(tmp_path))):
        data = build_data(cfg, val_fraction=0.5)  # a file's val split wins over a drawn one
        assert data.info["split"] in ("file", "column split")
        assert (len(data.train), len(data.val), len(data.test)) == (8, 8, 8)


def test_npz_no_modality_arrays(tmp_path):
    message = npz_error(tmp_path, label=np.arange(3), split=np.array(["train", "test", "test"]))
    assert "no modality arrays" in message


def test_npz_bad_labels_and_object_arrays(tmp_path):
    # an empty label or -1 is an unlabelled sample (tests/test_unlabelled.py); -2 is an error
    assert "sample 2: unknown label -2" in npz_error(tmp_path, x=np.zeros((3, 1)), label=np.array([0, 1, -2]))
    np.savez(tmp_path / "bad.npz", x=np.array([[1], "a"], dtype=object), label=np.arange(2), allow_pickle=True)
    with pytest.raises(DataError, match=r"bad\.npz: array 'x' cannot be read without pickle"):
        build("npz", tmp_path, path="bad.npz")


# --- manifest ----------------------------------------------------------------------------------
def fsdd_manifest(tmp_path: Path, jsonl: bool = False) -> tuple[Path, list[dict]]:
    """20 real FSDD recordings of digits 3 and 7 (copied next to the manifest), an MNIST PNG of the
    same digit and a .npy feature per row; row 5 has no audio and row 9 no image."""
    recordings = data_dir() / "fsdd" / "recordings"
    (tmp_path / "wav").mkdir()
    (tmp_path / "img").mkdir()
    (tmp_path / "npy").mkdir()
    images = {3: mnist(3, 10), 7: mnist(7, 10)}
    rows = []
    for digit in (3, 7):
        for k in range(10):
            name = f"{digit}_jackson_{k}.wav"
            shutil.copy(recordings / name, tmp_path / "wav" / name)
            write_png(tmp_path / "img" / f"{digit}_{k}.png", images[digit][k])
            np.save(tmp_path / "npy" / f"{digit}_{k}.npy", np.full((2, 3), digit * 10 + k, dtype=np.float32))
            rows.append({"label": str(digit), "audio": f"wav/{name}", "image": f"img/{digit}_{k}.png",
                         "feat": f"npy/{digit}_{k}.npy", "split": "test" if k < 2 else "train"})
    rows[5]["audio"] = ""
    rows[9]["image"] = ""
    rows[12]["audio"] = str(recordings / "7_jackson_2.wav")  # an absolute path
    if jsonl:
        path = tmp_path / "manifest.jsonl"
        with open(path, "w") as f:
            for r in rows:
                obj = {k: v for k, v in r.items() if k != "split"}
                obj["label"] = int(obj["label"])
                obj["audio"] = obj["audio"] or None
                f.write(json.dumps(obj) + "\n")
    else:
        path = write_csv(tmp_path / "manifest.csv", list(rows[0]), [list(r.values()) for r in rows])
    return path, rows


def test_manifest_csv_round_trip_real_fsdd_and_mnist(tmp_path):
    path, rows = fsdd_manifest(tmp_path)
    # integer labels are class indices; digits 3 and 7 alone skip classes 0-2 and 4-6, refused
    # unless ``classes`` names every class (a model with 8 outputs for 2 classes would otherwise
    # be trained and scored over empty ones)
    with pytest.raises(DataError, match=r"manifest.csv row \d+: label \d, but no sample has label 0, 1, 2, 4, 5"):
        build("manifest", tmp_path, path="manifest.csv", audio={"sample_rate": 8000, "standardize": False})
    digits = [str(d) for d in range(10)]
    train, test, info = build("manifest", tmp_path, path="manifest.csv", classes=digits,
                              audio={"sample_rate": 8000, "standardize": False})
    assert len(train) == 16 and len(test) == 4 and info["split"] == "column split"
    assert train.num_classes == 10 and info["classes"] == digits
    assert sorted(set(train.labels.tolist())) == [3, 7]
    assert {m: (s.kind, s.shape) for m, s in train.specs.items()} == {
        "audio": ("audio", (1, 32, 32)), "image": ("image", (1, 28, 28)), "feat": ("sequence", (2, 3))}
    # the split column keeps row order: train rows are 2-9 and 12-19 of the manifest
    order = [i for i, r in enumerate(rows) if r["split"] == "train"]
    params = LogMelParams()  # 8 kHz, as the fsdd dataset uses
    transform = LogMel(params)
    for j, i in enumerate(order):
        r = rows[i]
        assert int(train.labels[j]) == int(r["label"])
        feat_value = float(Path(r["feat"]).stem.replace("_", ""))  # digit * 10 + k
        assert torch.equal(train.modalities["feat"][j], torch.full((2, 3), feat_value))
        assert bool(train.present["audio"][j]) == (i != 5)
        assert bool(train.present["image"][j]) == (i != 9)
        if i == 5:
            assert not train.modalities["audio"][j].any()
        else:
            file = tmp_path / r["audio"] if not os.path.isabs(r["audio"]) else Path(r["audio"])
            wave = fix_length(read_wave(file, 8000), params.num_samples)
            expected = transform(torch.from_numpy(wave)[None])
            assert torch.allclose(train.modalities["audio"][j], expected, atol=1e-4)
        if i == 9:
            assert not train.modalities["image"][j].any()
        else:
            k = int(Path(r["image"]).stem.split("_")[1])
            expected = torch.from_numpy(mnist(int(r["label"]), 10)[k] / 255.0).float()
            assert torch.allclose(train.modalities["image"][j, 0], expected)
    assert info["modalities"]["audio"]["present"] == 19 and info["modalities"]["image"]["present"] == 19


def test_manifest_jsonl_resamples_and_stratifies(tmp_path):
    path, rows = fsdd_manifest(tmp_path, jsonl=True)
    train, test, info = build("manifest", tmp_path, path=str(path), test_fraction=0.2, classes=[str(d) for d in range(10)],
                              audio={"n_mels": 24, "frames": 20}, image_size=[14, 14])
    assert len(train) == 16 and len(test) == 4 and info["format"] == "jsonl"
    assert torch.bincount(test.labels, minlength=10)[[3, 7]].tolist() == [2, 2]
    assert train.specs["audio"].shape == (1, 24, 20) and train.specs["image"].shape == (1, 14, 14)
    assert info["audio"]["sample_rate"] == 16000 and info["audio"]["n_fft"] == 512  # resampled from 8 kHz
    audio = torch.cat([train.modalities["audio"], test.modalities["audio"]])
    present = torch.cat([train.present["audio"], test.present["audio"]])
    assert present.sum() == 19 and not audio[~present].any()
    assert abs(float(audio[present].mean())) < 0.5  # standardised with the training split
    image = torch.cat([train.modalities["image"], test.modalities["image"]])
    assert image.min() >= 0 and image.max() <= 1


def test_manifest_string_labels_rgb_and_mixed_images(tmp_path):
    rng = np.random.default_rng(0)
    write_png(tmp_path / "a.png", (rng.random((6, 5, 3)) * 255).astype(np.uint8))
    write_png(tmp_path / "b.png", (rng.random((6, 5)) * 255).astype(np.uint8))
    write_png(tmp_path / "c.jpg", (rng.random((6, 5)) * 255).astype(np.uint8))
    write_csv(tmp_path / "m.csv", ["pic", "label"],
              [["a.png", "dog"], ["b.png", "cat"], ["c.jpg", "dog"], ["b.png", "cat"], ["a.png", "bird"]])
    train, test, info = build("manifest", tmp_path, path="m.csv", test_fraction=0.4)
    assert info["classes"] == ["bird", "cat", "dog"]
    assert train.specs["pic"].shape == (3, 6, 5)  # grayscale promoted to RGB next to a colour image
    train, test, info = build("manifest", tmp_path, path="m.csv", classes=["dog", "cat", "bird", "fish"])
    assert info["classes"] == ["dog", "cat", "bird", "fish"] and train.num_classes == 4


def manifest_error(tmp_path, header, rows, name="manifest.csv", **options) -> str:
    path = write_csv(tmp_path / name, header, rows)
    with pytest.raises(DataError) as err:
        build("manifest", tmp_path, path=path.name, **options)
    message = str(err.value)
    assert name in message and "\n" not in message
    return message


def small_files(tmp_path, count=8):
    for i in range(count):
        np.save(tmp_path / f"f{i}.npy", np.full(3, i, dtype=np.float32))
        soundfile.write(tmp_path / f"s{i}.wav", np.sin(np.arange(800) * 0.1 * (i + 1)).astype(np.float32), 8000)


def test_manifest_missing_file(tmp_path):
    small_files(tmp_path)
    rows = [[f"s{i}.wav", f"f{i}.npy", str(i % 2)] for i in range(8)]
    rows[5][0] = "x.wav"  # row 7 of the file: the header is row 1
    message = manifest_error(tmp_path, ["audio", "feat", "label"], rows)
    assert "manifest.csv row 7: column audio: no such file x.wav" in message


@pytest.mark.parametrize("column,file,content,what", [
    ("audio", "broken.wav", b"RIFF\x00\x00garbage", "broken.wav: cannot decode audio"),
    ("image", "broken.png", b"\x89PNG\r\n\x1a\nnot really", "cannot decode image broken.png"),
    ("feat", "broken.npy", b"\x93NUMPY garbage", "cannot decode array broken.npy"),
])
def test_manifest_corrupt_file(tmp_path, column, file, content, what):
    small_files(tmp_path, 3)
    write_png(tmp_path / "ok.png", np.zeros((4, 4), np.uint8))
    (tmp_path / file).write_bytes(content)
    rows = [[f"s{i}.wav", "ok.png", f"f{i}.npy", str(i % 2)] for i in range(3)]
    rows[2][["audio", "image", "feat"].index(column)] = file
    message = manifest_error(tmp_path, ["audio", "image", "feat", "label"], rows)
    assert f"manifest.csv row 4: column {column}: {what}" in message


def test_manifest_unknown_or_empty_label(tmp_path):
    small_files(tmp_path, 4)
    rows = [[f"f{i}.npy", lab] for i, lab in enumerate(["cat", "dog", "cow", "cat"])]
    message = manifest_error(tmp_path, ["feat", "label"], rows, classes=["cat", "dog"])
    assert "manifest.csv row 4: unknown label 'cow'" in message
    message = manifest_error(tmp_path, ["feat", "category"], rows)
    assert "no label column 'label'" in message


def test_manifest_row_with_wrong_number_of_columns(tmp_path):
    small_files(tmp_path, 4)
    rows = [["f0.npy", "0"], ["f1.npy", "1"], ["f2.npy"], ["f3.npy", "1"]]
    assert "manifest.csv row 4: 1 columns but the header has 2" in manifest_error(tmp_path, ["feat", "label"], rows)


def test_manifest_truncated_jsonl_line(tmp_path):
    small_files(tmp_path, 3)
    lines = [json.dumps({"feat": f"f{i}.npy", "label": i % 2}) for i in range(3)]
    lines[2] = lines[2][:12]  # cut mid-line, as an interrupted write leaves it
    (tmp_path / "manifest.jsonl").write_text("\n".join(lines))
    with pytest.raises(DataError, match=r"manifest\.jsonl line 3: invalid JSON"):
        build("manifest", tmp_path, path="manifest.jsonl")


def test_manifest_shape_mismatch_between_rows(tmp_path):
    small_files(tmp_path, 4)
    np.save(tmp_path / "f2.npy", np.zeros(4, np.float32))
    rows = [[f"f{i}.npy", str(i % 2)] for i in range(4)]
    message = manifest_error(tmp_path, ["feat", "label"], rows)
    assert "manifest.csv row 4: column feat: f2.npy has shape [4] but f0.npy (row 2) has [3]" in message
    write_png(tmp_path / "a.png", np.zeros((4, 4), np.uint8))
    write_png(tmp_path / "b.png", np.zeros((5, 4), np.uint8))
    rows = [["a.png", "0"], ["a.png", "1"], ["b.png", "0"]]
    message = manifest_error(tmp_path, ["pic", "label"], rows)
    assert "manifest.csv row 4: column pic: b.png has shape [1, 5, 4]" in message and "image_size" in message
    train, _, _ = build("manifest", tmp_path, path="manifest.csv", image_size=[4, 4], test_fraction=0.5)
    assert train.specs["pic"].shape == (1, 4, 4)


def test_manifest_other_row_errors(tmp_path):
    small_files(tmp_path, 3)
    rows = [["f0.npy", "0", "train"], ["f1.npy", "1", "valid"], ["f2.npy", "0", "test"]]
    message = manifest_error(tmp_path, ["feat", "label", "split"], rows)
    assert "manifest.csv row 3: unknown split value 'valid'" in message
    rows = [["f0.npy", "0"], ["notes.txt", "1"]]
    message = manifest_error(tmp_path, ["feat", "label"], rows)
    assert "manifest.csv row 3: column feat: 'notes.txt' is not a" in message
    rows = [["", "0"], ["", "1"]]
    assert "column 'feat' has no files" in manifest_error(tmp_path, ["feat", "label"], rows)
