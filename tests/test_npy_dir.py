"""Dataset ``npy_dir``: memory-mapped files read by batch index, its errors, and training on data
larger than the memory the process may hold."""
import json
import pickle
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader, DistributedSampler

from conftest import REPO
from mmdistill.config import DataConfig
from mmdistill.data import DATASETS, build_data, parse_options
from mmdistill.data.npy_dir import NpyDirDataset
from mmdistill.errors import ConfigError, DataError

torch.set_num_threads(1)


def build(root, seed=0, **options):
    return DATASETS.get("npy_dir")(Path(root), parse_options("npy_dir", options), seed)


def write(folder: Path, **arrays) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for name, arr in arrays.items():
        np.save(folder / f"{name}.npy", arr)
    return folder


def sample_arrays(n=60, seed=0):
    rng = np.random.default_rng(seed)
    return {"img": rng.standard_normal((n, 1, 6, 6)).astype(np.float16),
            "vec": rng.integers(0, 100, (n, 5)).astype(np.int32),
            "label": np.array(["cat", "dog", "eel"])[np.arange(n) % 3],
            "present_vec": np.arange(n) % 4 != 0}


def test_round_trip_memory_mapped_with_presence_and_seeded_stratified_split(tmp_path):
    arrays = sample_arrays()
    write(tmp_path / "d", **arrays)
    train, test, info = build(tmp_path, path="d", test_fraction=0.25)
    assert isinstance(train, NpyDirDataset)
    assert isinstance(train.modalities["img"].array, np.memmap)  # mapped, not loaded
    assert info["classes"] == ["cat", "dog", "eel"] and info["split"].startswith("stratified")
    assert info["modalities"]["vec"] == {"kind": "vector", "shape": [5], "dtype": "int32", "present": 45}
    assert train.specs["img"].kind == "image" and train.specs["img"].shape == (1, 6, 6)
    assert len(train) == 45 and len(test) == 15
    assert torch.bincount(test.labels).tolist() == [5, 5, 5]  # stratified
    rows = train.modalities["img"].rows
    batch = train[list(range(len(train)))]
    assert torch.equal(batch["img"], torch.from_numpy(arrays["img"][rows].astype(np.float32)))
    vec = arrays["vec"][rows].astype(np.float32)
    vec[~arrays["present_vec"][rows]] = 0  # absent samples read as zeros
    assert torch.equal(batch["vec"], torch.from_numpy(vec))
    assert torch.equal(batch["present"]["vec"], torch.from_numpy(arrays["present_vec"][rows]))
    assert torch.equal(batch["index"], torch.arange(len(train)))
    one = train[3]
    assert torch.equal(one["img"], batch["img"][3]) and int(one["label"]) == int(batch["label"][3])
    again, _, _ = build(tmp_path, path="d", test_fraction=0.25)
    other, _, _ = build(tmp_path, seed=1, path="d", test_fraction=0.25)
    assert np.array_equal(again.modalities["img"].rows, rows)
    assert not np.array_equal(other.modalities["img"].rows, rows)


def test_split_file_with_validation_and_build_data(tmp_path):
    arrays = sample_arrays()
    split = np.zeros(60, dtype=np.int8)
    split[40:50], split[50:] = 1, 2
    write(tmp_path / "d", **arrays, split=split)
    cfg = DataConfig(name="npy_dir", root=str(tmp_path), path="d")
    data = build_data(cfg, seed=0, val_fraction=0.3)  # the file's val samples win over val_fraction
    assert (len(data.train), len(data.val), len(data.test)) == (40, 10, 10)
    assert data.val.modalities["img"].rows.tolist() == list(range(40, 50))
    assert data.test.modalities["img"].rows.tolist() == list(range(50, 60))
    assert data.info["split"] == "file"
    write(tmp_path / "s", **arrays, split=np.array(["train"] * 50 + ["test"] * 10))
    data = build_data(DataConfig(name="npy_dir", root=str(tmp_path), path="s"), seed=0, val_fraction=0.2)
    assert len(data.test) == 10 and len(data.val) > 0 and len(data.train) + len(data.val) == 50


class CountingArray:
    """Wraps an array; records each read's row indices."""

    def __init__(self, array):
        self.array, self.reads = array, []
        self.shape, self.dtype = array.shape, array.dtype

    def __getitem__(self, index):
        self.reads.append(np.asarray(index))
        return self.array[index]


def test_a_batch_is_one_sorted_fancy_index_per_modality_also_under_a_distributed_sampler(tmp_path):
    write(tmp_path / "d", **sample_arrays())
    train, _, _ = build(tmp_path, path="d", test_fraction=0.25)
    counters = {m: CountingArray(c.array) for m, c in train.modalities.items()}
    for m, c in train.modalities.items():
        c.array = counters[m]
    batches = list(train.loader(16, shuffle=True, seed=0))
    assert len(batches) == 3
    for counter in counters.values():
        assert len(counter.reads) == 3  # one read per batch, not one per sample
        assert all(np.all(np.diff(r) > 0) for r in counter.reads)  # ascending rows
    seen = torch.cat([b["index"] for b in batches])
    assert sorted(seen.tolist()) == list(range(len(train)))
    for b in batches:  # each sample's values are its own row's, whatever the order
        rows = train.modalities["img"].rows[b["index"].numpy()]
        assert torch.equal(b["img"], torch.from_numpy(counters["img"].array[rows].astype(np.float32)))

    blob = pickle.dumps(train)  # as DataLoader workers started by spawn/forkserver get it: maps reopened by file
    loaded = pickle.loads(blob)
    assert all(isinstance(c.array, np.memmap) for c in loaded.modalities.values())
    assert torch.equal(loaded[[3, 1]]["img"], train[[3, 1]]["img"])

    shards = []
    for rank in range(2):
        sampler = DistributedSampler(train, num_replicas=2, rank=rank, shuffle=True, seed=0)
        loader = DataLoader(train, batch_size=8, sampler=sampler, collate_fn=lambda b: b)
        shards.append(torch.cat([b["index"] for b in loader]))
    assert sorted(set(torch.cat(shards).tolist())) == list(range(len(train)))  # (one sample padded twice)
    assert len(shards[0]) == len(shards[1]) == 23


def error(tmp_path, **arrays) -> str:
    shutil.rmtree(tmp_path / "bad", ignore_errors=True)
    folder = write(tmp_path / "bad", **arrays)
    with pytest.raises(DataError) as info:
        train, test, _ = build(tmp_path, path="bad")
        train[list(range(len(train)))], test[list(range(len(test)))]
    message = str(info.value)
    assert str(folder) in message and "\n" not in message
    return message


def test_errors_name_the_file_and_sample(tmp_path):
    x, label = np.zeros((8, 3), np.float32), np.arange(8) % 2
    assert "no label.npy" in error(tmp_path, x=x)
    assert "x.npy: has 7 samples but label.npy has 8" in error(tmp_path, x=x[:7], label=label)
    assert "x.npy: dtype complex64" in error(tmp_path, x=x.astype(np.complex64), label=label)
    assert "x.npy: dtype <U1" in error(tmp_path, x=np.full((8, 3), "a"), label=label)
    bad = x.copy()
    bad[5, 1] = np.nan
    assert "x.npy: sample 5 has NaN" in error(tmp_path, x=bad, label=label)
    assert "label.npy: array 'label' sample 2: unknown label -2" in error(tmp_path, x=x, label=np.array([0, 1, -2, 0, 1, 0, 1, 0]))
    assert "split.npy: sample 3: unknown split value" in error(tmp_path, x=x, label=label, split=np.array([0, 0, 0, 7, 2, 2, 0, 0]))
    assert "split.npy: no sample is marked 'test'" in error(tmp_path, x=x, label=label, split=np.zeros(8, np.int64))
    assert "present_y.npy masks modality 'y'" in error(tmp_path, x=x, label=label, present_y=np.ones(8, bool))
    assert "present_x.npy: must hold booleans" in error(tmp_path, x=x, label=label, present_x=np.full(8, 2))
    assert "sample 6 has every modality absent" in error(  # a sample needs one modality, as in npz
        tmp_path, x=x, y=x, label=label, present_x=np.arange(8) < 6, present_y=np.arange(8) != 6)
    nan_absent = bad.copy()
    present = np.ones(8, bool)
    present[5] = False  # an absent sample's stored NaN is ignored
    write(tmp_path / "ok", x=nan_absent, y=x, label=label, present_x=present)  # sample 5 keeps y
    train, test, _ = build(tmp_path, path="ok")
    for part in (train, test):
        assert torch.isfinite(part[list(range(len(part)))]["x"]).all()
    with pytest.raises(DataError, match="no such folder"):
        build(tmp_path, path="missing")
    with pytest.raises(ConfigError, match="data.bogus: unknown key"):
        parse_options("npy_dir", {"path": "d", "bogus": 1})


@pytest.mark.skipif(sys.platform != "linux", reason="RLIMIT_DATA counts private memory only on Linux >= 4.7; reads /proc")
def test_trains_one_epoch_on_data_five_times_the_memory_limit(tmp_path):
    """A child process under RLIMIT_DATA = (its baseline after importing torch) + data / 5 trains
    one epoch on an npy_dir of ~100 MB, and distils with the cache in mmap; the same child then
    fails to load the data into memory, so the limit bites. RLIMIT_DATA, not RLIMIT_AS: the address
    space counts the mapped file itself and torch's reservations, while RLIMIT_DATA counts private
    writable memory only (Linux >= 4.7), which reading the data into memory takes and reading it
    through mmap does not."""
    sys.path.insert(0, str(REPO / "benchmarks"))
    try:
        from memory import make_npy
    finally:
        sys.path.remove(str(REPO / "benchmarks"))
    folder = make_npy(tmp_path / "big", 100)
    size = sum(f.stat().st_size for f in folder.glob("*.npy"))
    proc = subprocess.run([sys.executable, str(REPO / "benchmarks" / "memory.py"), "child", "npy", "--data", str(folder),
                           "--limit-fraction", "0.2"], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-2000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["limit_bytes"] - out["baseline_data_bytes"] <= size / 5 + 1
    for fit in ("train", "distill"):  # one epoch each, and they learned (10 well-separated classes)
        assert out[fit]["epochs"] == 1 and out[fit]["val_accuracy"] > 0.9
    assert out["load_error"] and out["load_error"].startswith("MemoryError")


def test_cli_train_and_distill_on_npy_dir_with_a_memory_mapped_cache(tmp_path):
    from conftest import run_cli
    from conftest import write as write_config

    rng = np.random.default_rng(0)
    labels = np.arange(120) % 3
    write(tmp_path / "d", x=(rng.standard_normal((120, 8)) + 2 * labels[:, None]).astype(np.float32), label=labels)
    base = {"data": {"name": "npy_dir", "path": str(tmp_path / "d")},
            "model": {"encoders": {"x": {"type": "mlp", "hidden": [8]}}},
            "train": {"epochs": 4, "batch_size": 32, "progress": False, "optimizer": {"lr": 0.03}}, "device": "cpu"}
    assert run_cli("train", write_config(tmp_path, "t.yaml", base), "--out", tmp_path / "teacher") == 0
    student = {**base, "train": {**base["train"], "cache_storage": "mmap", "cache_dtype": "float16"},
               "distill": {"teacher": {"checkpoint": str(tmp_path / "teacher" / "best.pt")}}}
    assert run_cli("distill", write_config(tmp_path, "s.yaml", student), "--out", tmp_path / "student") == 0
    summary = json.loads((tmp_path / "student" / "summary.json").read_text())
    assert summary["dataset"]["dataset"] == "npy_dir" and summary["student"]["accuracy"] > 0.5
    assert not list((tmp_path / "student").glob("teacher-cache-*"))  # the cache files are gone


def test_unlabelled_samples_and_label_fraction_in_npy_dir(tmp_path):
    """label -1 marks an unlabelled sample in npy_dir as in npz: it only trains; label_fraction works."""
    from mmdistill import DataConfig
    from mmdistill.data import build_data

    rng = np.random.default_rng(0)
    labels = np.tile(np.arange(4), 30)
    labels[:20] = -1
    np.save(tmp_path / "x.npy", rng.normal(size=(120, 5)).astype(np.float32))
    np.save(tmp_path / "label.npy", labels)
    data = build_data(DataConfig(name="npy_dir", path=str(tmp_path)), seed=0, val_fraction=0.1)
    assert data.test.labelled.all() and data.val.labelled.all()
    assert data.train.num_labelled == len(data.train) - 20
    fewer = build_data(DataConfig(name="npy_dir", path=str(tmp_path), label_fraction=0.25), seed=0, val_fraction=0.1)
    assert len(fewer.train) == len(data.train) and fewer.train.num_labelled < data.train.num_labelled / 2
    assert fewer.info["train_unlabelled"] == len(fewer.train) - fewer.train.num_labelled


def test_options_that_would_rewrite_the_arrays_are_refused():
    from mmdistill.config import parse_config
    from mmdistill.errors import ConfigError

    model = {"encoders": {"x": {"type": "mlp"}}}
    with pytest.raises(ConfigError, match=r"data\.standardize: npy_dir arrays stay on disk.*standardised"):
        parse_config({"data": {"name": "npy_dir", "path": "d", "standardize": True}, "model": model})
    with pytest.raises(ConfigError, match=r"data\.text: npy_dir arrays stay on disk.*token ids"):
        parse_config({"data": {"name": "npy_dir", "path": "d", "text": {"t": {"tokenizer": "tok"}}}, "model": model})
