"""Unlabelled samples (issue 13): in .npz and manifests, masked cross-entropy, splits that keep them
in training, ``data.label_fraction``, ``data.unlabelled`` transfer sets, teacher training on the
labelled part, and the label-efficiency benchmark's result file."""
import csv
import json

import numpy as np
import pytest
import torch

from conftest import REPO, run_cli, write
from mmdistill.config import ConfigError, DataConfig, parse_config
from mmdistill.data import build_data
from mmdistill.data.dataset import MultimodalDataset, keep_label_fraction, split_validation
from mmdistill.errors import DataError
from mmdistill.losses.labels import label_loss

torch.set_num_threads(1)


def blobs(n=120, classes=3, dim=6, seed=0):
    """Separable Gaussian blobs: x [n, dim], labels [n] (balanced)."""
    rng = np.random.default_rng(seed)
    y = np.arange(n) % classes
    x = rng.normal(size=(n, dim)).astype(np.float32) + 3 * np.eye(classes, dim, dtype=np.float32)[y]
    return x, y


def npz_data(tmp_path, name="d.npz", **extra):
    x, y = blobs()
    arrays = {"x": x, "label": y, **extra}
    np.savez(tmp_path / name, **arrays)
    return {"name": "npz", "root": str(tmp_path), "path": name}


# --- reading unlabelled samples -------------------------------------------------------------------
def test_npz_minus_one_labels_stay_in_training_and_never_validate_or_test(tmp_path):
    x, y = blobs()
    y = y.copy()
    y[::4] = -1  # 30 unlabelled samples
    np.savez(tmp_path / "d.npz", x=x, label=y)
    data = build_data(DataConfig(name="npz", root=str(tmp_path), path="d.npz"), seed=0, val_fraction=0.2)
    assert (data.train.labels == -1).sum() == 30 and len(data.train) + len(data.val) + len(data.test) == 120
    assert data.val.labelled.all() and data.test.labelled.all()
    assert data.info["train_unlabelled"] == 30 and data.info["train_labelled"] == data.train.num_labelled
    batch = data.train[list(range(8))]
    assert torch.equal(batch["labelled"], batch["label"] >= 0) and batch["labelled"].dtype == torch.bool
    assert data.num_classes == 3


def test_npz_labelled_array_masks_labels(tmp_path):
    labelled = np.ones(120, dtype=bool)
    labelled[[3, 51, 99]] = False
    cfg = npz_data(tmp_path, labelled=labelled, split=np.where(np.arange(120) % 5 == 0, "test", "train"))
    data = build_data(DataConfig.model_validate(cfg), seed=0)
    assert "labelled" not in data.specs  # the mask is not a modality
    assert int((data.train.labels == -1).sum()) == 3 and data.test.labelled.all()


def test_split_file_putting_an_unlabelled_sample_in_test_names_it(tmp_path):
    x, y = blobs()
    y = y.copy()
    y[10] = -1
    np.savez(tmp_path / "d.npz", x=x, label=y, split=np.where(np.arange(120) % 5 == 0, "test", "train"))
    with pytest.raises(DataError, match=r"d\.npz: array 'split' sample 10: an unlabelled sample cannot be a test"):
        build_data(DataConfig(name="npz", root=str(tmp_path), path="d.npz"))


def test_manifest_empty_label_cell_is_unlabelled(tmp_path):
    rows = []
    for i in range(24):
        np.save(tmp_path / f"f{i}.npy", np.full(3, i % 2 * 5.0 + i * 0.01, dtype=np.float32))
        rows.append([f"f{i}.npy", "" if i in (4, 9) else ("cat" if i % 2 else "dog")])
    with open(tmp_path / "m.csv", "w", newline="") as f:
        csv.writer(f).writerows([["feat", "label"], *rows])
    data = build_data(DataConfig(name="manifest", root=str(tmp_path), path="m.csv"), seed=0)
    assert int((data.train.labels == -1).sum()) == 2 and data.test.labelled.all()
    assert data.num_classes == 2 and data.info["classes"] == ["cat", "dog"]
    rows[4].append("test")
    for row in rows[:4] + rows[5:]:
        row.append("train" if rows.index(row) % 3 else "test")
    with open(tmp_path / "m.csv", "w", newline="") as f:
        csv.writer(f).writerows([["feat", "label", "split"], *rows])
    with pytest.raises(DataError, match=r"m\.csv row 6: an unlabelled sample cannot be a test sample"):
        build_data(DataConfig(name="manifest", root=str(tmp_path), path="m.csv"))


def test_validation_split_draws_labelled_samples_only():
    x, y = blobs(n=200)
    y = torch.as_tensor(y)
    y[1::2] = -1
    ds = MultimodalDataset({"x": torch.as_tensor(x)}, y, num_classes=3, groups=torch.arange(200) // 4)
    train, val = split_validation(ds, 0.3, seed=1)
    assert val.labelled.all() and len(val) > 0
    assert int((train.labels == -1).sum()) == 100  # every unlabelled sample stays in training


# --- cross-entropy ------------------------------------------------------------------------------
def test_cross_entropy_averages_over_labelled_samples_only():
    torch.manual_seed(0)
    logits = torch.randn(6, 4, requires_grad=True)
    labels = torch.tensor([2, -1, 0, -1, 3, 1])
    ce = label_loss(logits, {"label": labels})
    # independent reference: -log softmax at the label, averaged by hand over the 4 labelled rows
    logp = logits.detach().log_softmax(1)
    ref = -(logp[0, 2] + logp[2, 0] + logp[4, 3] + logp[5, 1]) / 4
    assert torch.allclose(ce, ref)
    ce.backward()
    assert torch.all(logits.grad[[1, 3]] == 0) and torch.all(logits.grad[[0, 2, 4, 5]].abs().sum(1) > 0)
    per_sample = label_loss(logits.detach(), {"label": labels}, reduction="none")
    assert per_sample[1] == 0 and per_sample[3] == 0
    # mixup: each side weighted by its own mask, lam * sum m_i CE_i + (1 - lam) * sum m_j CE_j over the weights
    mix = torch.tensor([-1, 2, 2, 0, -1, 3])
    lam = 0.3
    got = label_loss(logits.detach(), {"label": labels, "label_mix": mix, "mix_lambda": torch.tensor(lam)})
    num = den = 0.0
    for i in range(6):
        for y, w in ((labels[i], lam), (mix[i], 1 - lam)):
            if y >= 0:
                num += w * -float(logp[i, y])
                den += w
    assert abs(float(got) - num / den) < 1e-5


def test_all_unlabelled_batch_gives_zero_cross_entropy_and_no_nan():
    logits = torch.randn(5, 3, requires_grad=True)
    ce = label_loss(logits, {"label": torch.full((5,), -1)})
    assert float(ce.detach()) == 0.0
    ce.backward()
    assert torch.isfinite(logits.grad).all() and float(logits.grad.abs().sum()) == 0.0


def test_distillation_covers_unlabelled_samples_and_the_teacher_cache_every_sample():
    from mmdistill.api import make_terms
    from mmdistill.distill.tasks import DistillationTask
    from mmdistill.models import build_model

    x, y = blobs(n=40)
    y = torch.as_tensor(y)
    y[:20] = -1
    ds = MultimodalDataset({"x": torch.as_tensor(x)}, y, num_classes=3)
    make = lambda seed: build_model({"encoders": {"x": {"type": "mlp", "hidden": [8]}}}, ds.specs, 3, seed=seed)  # noqa: E731
    task = DistillationTask(make(0), make(1), make_terms([{"name": "kd", "temperature": 2.0}]))
    batch = ds[list(range(10))]  # unlabelled samples only
    task.setup(batch, len(ds), labels=ds.labels)
    task.cache_teacher_outputs(ds, batch_size=16, device="cpu")
    assert task._cache.arrays[0]["logits"].shape[0] == len(ds)
    _, losses = task.training_step(batch)
    assert float(losses["ce"].detach()) == 0.0 and float(losses["kd"].detach()) > 0
    task.teardown()


def test_a_loss_that_needs_every_label_refuses_unlabelled_data():
    from mmdistill.api import make_terms
    from mmdistill.distill.tasks import DistillationTask
    from mmdistill.models import build_model

    x, y = blobs(n=30)
    y = torch.as_tensor(y)
    y[0] = -1
    ds = MultimodalDataset({"x": torch.as_tensor(x)}, y, num_classes=3)
    make = lambda seed: build_model({"encoders": {"x": {"type": "mlp", "hidden": [8]}}}, ds.specs, 3, seed=seed)  # noqa: E731
    task = DistillationTask(make(0), make(1), make_terms(["dkd"]))
    with pytest.raises(ConfigError, match=r"distill\.terms\[0\]: loss 'dkd' needs every training sample's label"):
        task.setup(ds[list(range(8))], len(ds), labels=ds.labels)


# --- label_fraction ----------------------------------------------------------------------------
def test_label_fraction_is_stratified_seeded_and_keeps_one_per_class(tmp_path):
    x, y = blobs(n=300, classes=3)
    y[y == 2] = np.where(np.arange((y == 2).sum()) < 10, 2, 0)  # class 2 rare: 10 samples
    ds = MultimodalDataset({"x": torch.as_tensor(x)}, torch.as_tensor(y), num_classes=3)
    kept = keep_label_fraction(ds, 0.1, seed=0)
    per_class = {c: int((kept.labels == c).sum()) for c in range(3)}
    before = {c: int((ds.labels == c).sum()) for c in range(3)}
    assert per_class == {c: max(1, round(0.1 * before[c])) for c in range(3)}
    assert torch.equal(kept.labels[kept.labelled], ds.labels[kept.labelled])  # kept labels are the true ones
    again, other = keep_label_fraction(ds, 0.1, seed=0), keep_label_fraction(ds, 0.1, seed=1)
    assert torch.equal(again.labels, kept.labels) and not torch.equal(other.labels, kept.labels)
    tiny = keep_label_fraction(ds, 0.001, seed=0)
    assert {c: int((tiny.labels == c).sum()) for c in range(3)} == {0: 1, 1: 1, 2: 1}

    np.savez(tmp_path / "d.npz", x=x, label=y)
    data = build_data(DataConfig(name="npz", root=str(tmp_path), path="d.npz", label_fraction=0.25), seed=3,
                      val_fraction=0.2)
    full = build_data(DataConfig(name="npz", root=str(tmp_path), path="d.npz"), seed=3, val_fraction=0.2)
    assert torch.equal(data.val.labels, full.val.labels) and data.val.labelled.all()  # validation keeps its labels
    assert data.test.labelled.all() and len(data.train) == len(full.train)
    assert data.train.num_labelled < 0.3 * len(data.train) and data.info["label_fraction"] == 0.25


def test_label_fraction_must_be_in_zero_one():
    base = {"model": {"encoders": {"x": {"type": "mlp"}}}}
    for bad in (0, 1.5, -0.1):
        with pytest.raises(ConfigError, match="data.label_fraction"):
            parse_config({**base, "data": {"name": "npz", "path": "d.npz", "label_fraction": bad}})


# --- data.unlabelled ---------------------------------------------------------------------------
def test_transfer_set_joins_training_only_with_its_labels_ignored(tmp_path):
    cfg = npz_data(tmp_path)
    x2, y2 = blobs(n=50, seed=5)
    np.savez(tmp_path / "extra.npz", x=x2, label=np.full(50, -1))
    data = build_data(DataConfig.model_validate({**cfg, "standardize": False, "unlabelled": {"name": "npz", "path": "extra.npz"}}),
                      seed=0, val_fraction=0.1)
    plain = build_data(DataConfig.model_validate({**cfg, "standardize": False}), seed=0, val_fraction=0.1)
    assert len(data.train) == len(plain.train) + 50 and len(data.val) == len(plain.val)
    assert len(data.test) == len(plain.test)
    assert torch.equal(data.train.modalities["x"][-50:], torch.as_tensor(x2))
    assert (data.train.labels[-50:] == -1).all() and data.info["transfer_set"]["samples"] == 50
    # a labelled file as a transfer set: labels ignored, every sample (its own split too) joins training
    np.savez(tmp_path / "labelled.npz", x=x2, label=y2)
    data = build_data(DataConfig.model_validate({**cfg, "standardize": False, "unlabelled": {"name": "npz", "path": "labelled.npz"}}),
                      seed=0, val_fraction=0.1)
    assert len(data.train) == len(plain.train) + 50 and (data.train.labels[-50:] == -1).all()


def test_transfer_set_modalities_must_match(tmp_path):
    cfg = npz_data(tmp_path)
    x2, _ = blobs(n=20, dim=4)
    np.savez(tmp_path / "wide.npz", x=x2, label=np.full(20, -1))
    np.savez(tmp_path / "other.npz", z=blobs(n=20)[0], label=np.full(20, -1))
    with pytest.raises(DataError, match=r"data\.unlabelled: modality 'x' is vector \[4\] in the transfer set but vector \[6\]"):
        build_data(DataConfig.model_validate({**cfg, "unlabelled": {"name": "npz", "path": "wide.npz"}}))
    with pytest.raises(DataError, match=r"data\.unlabelled: the transfer set has no modality 'x'"):
        build_data(DataConfig.model_validate({**cfg, "unlabelled": {"name": "npz", "path": "other.npz"}}))
    base = {"model": {"encoders": {"x": {"type": "mlp"}}}}
    with pytest.raises(ConfigError, match=r"data\.unlabelled\.test_fractio: unknown key"):
        parse_config({**base, "data": {**cfg, "unlabelled": {"name": "npz", "path": "o.npz", "test_fractio": 0.1}}})
    with pytest.raises(ConfigError, match=r"data\.unlabelled\.label_fraction: a transfer set has no labels"):
        parse_config({**base, "data": {**cfg, "unlabelled": {"name": "npz", "path": "o.npz", "label_fraction": 0.5}}})


# --- teacher training --------------------------------------------------------------------------
def test_train_uses_the_labelled_samples_and_says_how_many(tmp_path, capsys):
    x, y = blobs(n=150)
    y = y.copy()
    y[np.random.default_rng(1).choice(len(y), 50, replace=False)] = -1  # every class keeps labelled samples
    np.savez(tmp_path / "d.npz", x=x, label=y)
    cfg = {"data": {"name": "npz", "root": str(tmp_path), "path": "d.npz"},
           "model": {"encoders": {"x": {"type": "mlp", "hidden": [16]}}},
           "train": {"epochs": 2, "batch_size": 16, "progress": False}}
    assert run_cli("train", write(tmp_path, "t.yaml", cfg), "--out", tmp_path / "run") == 0
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    data = build_data(parse_config(cfg).data, seed=0, val_fraction=0.1)
    assert summary["labelled"] == {"used": data.train.num_labelled, "unlabelled_skipped": 50}
    assert f"training with the {data.train.num_labelled} labelled training samples; 50 unlabelled" in capsys.readouterr().out
    metrics = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert all(0 <= m["train_accuracy"] <= 1 for m in metrics)


# --- the benchmark -----------------------------------------------------------------------------
def count_steps(monkeypatch) -> list:
    """A list that grows by one per optimisation step the engine takes (``Trainer._step``)."""
    from mmdistill.distill import engine

    taken = []
    step = engine.Trainer._step

    def counting(self, *args, **kwargs):
        taken.append(1)
        return step(self, *args, **kwargs)

    monkeypatch.setattr(engine.Trainer, "_step", counting)
    return taken


def test_label_efficiency_benchmark_rows_report_the_steps_they_took(tmp_path, monkeypatch):
    """Every row of every model, and every candidate a row chose among, reports the optimisation steps
    the engine took (their sum is every step taken), and every student of a cell had the same budget."""
    monkeypatch.setenv("MMDISTILL_CACHE", str(tmp_path / "cache"))
    monkeypatch.syspath_prepend(str(REPO / "benchmarks"))
    import label_efficiency
    taken = count_steps(monkeypatch)
    label_efficiency.main([
        "--fractions", "0.2", "1.0", "--seeds", "0", "--max-epochs", "4", "--patience", "1",
        "--teacher-epoch-steps", "2", "--teacher-max-epochs", "4", "--teacher-patience", "1", "--linear-c", "1.0",
        "--data", json.dumps({"name": "synthetic", "train_size": 120, "test_size": 40, "num_classes": 4}),
        "--set", "model.encoders.image.channels=[4]",
        "--set", "model.encoders.audio.channels=[4]", "--name", str(tmp_path / "le_0.2")])  # a dot in the name is kept
    out = json.loads((tmp_path / "le_0.2.json").read_text())
    keys = {(r["label_fraction"], r["model"]) for r in out["rows"]}
    assert keys == {(0.2, m) for m in label_efficiency.MODELS} | {(1.0, m) for m in label_efficiency.models_at(1.0)}
    counted = 0
    for r in out["rows"]:
        assert r["seed"] == 0 and 0 <= r["accuracy"] <= 100
        if r["model"] == "linear":
            continue
        assert r["steps"] == r["epochs_run"] * r["steps_per_epoch"] > 0
        assert r["best_epoch"] <= r["epochs_run"] <= r["max_epochs"] == 4
        assert r["converged"] == (r["stopped_early"] or not r["best_epoch"] > 3.6)
        counted += sum(c["steps"] for c in r["candidates"]) if "candidates" in r else r["steps"]
    assert counted == len(taken)  # nothing trained that a row does not report, and no row reports steps not taken
    for f in (0.2, 1.0):
        students = [r for r in out["rows"] if r["label_fraction"] == f and r["model"] in label_efficiency.STUDENTS]
        n = students[0]["labelled"] + students[0]["unlabelled"]
        # one student epoch = one pass over the whole training split's size, whatever the student reads
        assert {r["steps_per_epoch"] for r in students} == {-(-n // 128)}
        assert len({r["max_steps"] for r in students}) == 1
    # every row that learns from a teacher names that teacher's test accuracy: its cell's teacher row
    for r in out["rows"]:
        if r["model"] not in ("teacher", "linear", "scratch"):
            teacher = next(t for t in out["rows"] if t["model"] == "teacher" and t["label_fraction"] == r["label_fraction"])
            assert r["teacher_accuracy"] == pytest.approx(teacher["accuracy"]), r["model"]
    pseudo = next(r for r in out["rows"] if r["model"] == "pseudo_label")
    assert pseudo["threshold"] in (0.5, 0.9) and pseudo["unlabelled"] > 0
    assert next(r for r in out["rows"] if r["model"] == "kd_pseudo")["threshold"] == pseudo["threshold"]
    # consistent teaching as the packaged recipe does it: its terms, the teacher read from its view cache
    from mmdistill.demo import recipe

    for consistent in (r for r in out["rows"] if r["model"] == "kd_consistent"):
        assert consistent["terms"] == recipe("av_digits_student")["distill"]["terms"]
        assert consistent["view_cache_seconds"] > 0
    scratch = next(r for r in out["rows"] if r["model"] == "scratch" and r["label_fraction"] == 0.2)
    assert scratch["labelled"] < 0.3 * (scratch["labelled"] + scratch["unlabelled"])
    assert {(c["lr"], c["augment"]) for c in scratch["candidates"]} == {(0.003, False), (0.003, True),
                                                                         (0.001, False), (0.001, True)}
    assert (tmp_path / "le_0.2.md").is_file() and (tmp_path / "le_0.2.png").stat().st_size > 0
    assert set(out["summary"]) == {"0.2", "1.0"}


def test_label_efficiency_chooses_the_teachers_augmentation_on_validation(tmp_path, monkeypatch):
    """``--teacher-augment off on``: both teachers train (their steps are all reported), the one with the
    better validation accuracy is the cell's teacher, and the KD rows learn from that one."""
    monkeypatch.setenv("MMDISTILL_CACHE", str(tmp_path / "cache"))
    monkeypatch.syspath_prepend(str(REPO / "benchmarks"))
    import label_efficiency
    taken = count_steps(monkeypatch)
    label_efficiency.main([
        "--fractions", "0.2", "--seeds", "0", "--models", "teacher", "kd_t4", "--max-epochs", "3", "--patience", "1",
        "--teacher-epoch-steps", "2", "--teacher-max-epochs", "4", "--teacher-patience", "1", "--teacher-augment", "off", "on",
        "--data", json.dumps({"name": "synthetic", "train_size": 120, "test_size": 40, "num_classes": 4}),
        "--set", "model.encoders.image.channels=[4]", "--set", "model.encoders.audio.channels=[4]",
        "--name", str(tmp_path / "le")])
    out = json.loads((tmp_path / "le.json").read_text())
    assert out["settings"]["teacher_augment"] == ["off", "on"]
    teacher = next(r for r in out["rows"] if r["model"] == "teacher")
    kd = next(r for r in out["rows"] if r["model"] == "kd_t4")
    assert [c["augment"] for c in teacher["candidates"]] == [False, True]
    best = max(teacher["candidates"], key=lambda c: c["val_accuracy"])  # the first on a tie
    assert teacher["augment"] == best["augment"] and teacher["val_accuracy"] == best["val_accuracy"]
    assert kd["teacher_accuracy"] == pytest.approx(teacher["accuracy"])
    assert len(taken) == sum(c["steps"] for c in teacher["candidates"]) + kd["steps"]


def test_label_efficiency_resized_sets_have_the_epoch_size_asked_for():
    import sys

    sys.path.insert(0, str(REPO / "benchmarks"))
    import label_efficiency

    ds = MultimodalDataset({"x": torch.arange(30.0)[:, None]}, torch.arange(30) % 3, num_classes=3)
    big = label_efficiency.resized(ds, 100, seed=0)
    assert len(big) == 100
    counts = torch.bincount(big.modalities["x"][:, 0].long(), minlength=30)
    assert set(counts.tolist()) <= {3, 4} and counts.sum() == 100  # every sample 3 or 4 times
    assert torch.equal(big.labels, big.modalities["x"][:, 0].long() % 3)  # labels follow their samples
    assert label_efficiency.resized(ds, 30, seed=0) is ds


def test_evaluation_scores_labels_on_labelled_samples_and_agreement_on_all():
    from mmdistill.evaluate import evaluate_model
    from mmdistill.models import build_model

    x, y = blobs(n=30)
    y = torch.as_tensor(y)
    y[:10] = -1
    ds = MultimodalDataset({"x": torch.as_tensor(x)}, y, num_classes=3)
    model = build_model({"encoders": {"x": {"type": "mlp", "hidden": [8]}}}, ds.specs, 3, seed=0)
    other = build_model({"encoders": {"x": {"type": "mlp", "hidden": [8]}}}, ds.specs, 3, seed=1)
    report = evaluate_model(model, ds, teacher=other, latency=False)
    with torch.no_grad():
        pred, ref = model(ds[list(range(30))]).argmax(1), other(ds[list(range(30))]).argmax(1)
    assert report["samples"] == 20 and report["unlabelled"] == 10
    assert report["accuracy"] == pytest.approx(float((pred[10:] == y[10:]).float().mean()))
    assert report["teacher_agreement"] == pytest.approx(float((pred == ref).float().mean()))
    assert sum(map(sum, report["confusion"])) == 20
