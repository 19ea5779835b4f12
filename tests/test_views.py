"""Consistent teaching (``augment_teacher: consistent``), CutMix across modalities, and the
augmented-view teacher cache (``train.view_cache``): checked against independent computations."""
import json
import signal

import pytest
import torch
import torch.nn.functional as F

from mmdistill.api import distill, train
from mmdistill.config import TrainConfig, parse_config
from mmdistill.data.augment import (apply_mixup, augment_batch, cut_regions, draw_cutmix, draw_mixup, apply_cutmix,
                                    modality_dropout, time_shift, training_inputs)
from mmdistill.distill.engine import Trainer
from mmdistill.distill.views import ViewCache, Views
from mmdistill.errors import ConfigError, Interrupted
from mmdistill.losses.labels import label_loss
from test_augment_inputs import BASE
from test_teacher_cache import model, tiny_data

torch.set_num_threads(1)

KINDS = {"image": "image", "audio": "audio"}
AUGMENT = {"image": [{"type": "translate", "pixels": 2}],
           "audio": [{"type": "time_mask", "width": 4}, {"type": "freq_mask", "width": 3}]}


def batch(size=6):
    g = torch.Generator().manual_seed(0)
    return {"image": torch.rand(size, 1, 8, 8, generator=g) + 1, "audio": torch.rand(size, 1, 5, 16, generator=g) + 1,
            "label": torch.arange(size) % 3, "index": torch.arange(size)}


# --- CutMix -------------------------------------------------------------------------------
def test_cutmix_pastes_one_partner_box_and_time_band_with_the_same_fraction_in_every_modality():
    b = batch()
    torch.manual_seed(5)
    raw = float(torch.distributions.Beta(1.0, 1.0).sample())  # the coefficient draw_cutmix will draw
    torch.manual_seed(5)
    draw = draw_cutmix(b, 1.0, KINDS, torch.Generator().manual_seed(1))
    out = apply_cutmix(b, draw)
    perm = draw["perm"]
    h = w = round(8 * (1 - raw) ** 0.5)
    t = round(16 * (1 - raw))
    for i in range(6):
        j = int(perm[i])
        if j == i:  # its own partner: unchanged
            assert torch.equal(out["image"][i], b["image"][i]) and torch.equal(out["audio"][i], b["audio"][i])
            continue
        # image: exactly an h x w rectangle holds sample j's pixels, the rest sample i's
        from_partner = (out["image"][i] == b["image"][j]) & (out["image"][i] != b["image"][i])
        rows, cols = from_partner[0].nonzero(as_tuple=True)
        if h * w:
            assert len(rows) == h * w and int(rows.max() - rows.min()) + 1 == h and int(cols.max() - cols.min()) + 1 == w
        assert torch.equal(out["image"][i][~from_partner], b["image"][i][~from_partner])
        # audio: t consecutive time steps, every frequency, from the same partner j
        steps = ((out["audio"][i] == b["audio"][j]) & (out["audio"][i] != b["audio"][i])).all(dim=1)[0]
        assert int(steps.sum()) == t
        if t:
            where = steps.nonzero().squeeze(1)
            assert int(where.max() - where.min()) + 1 == t
    assert sum(int(perm[i]) != i for i in range(6)) >= 3
    lam = 1 - (h * w / 64 + t / 16) / 2
    assert float(out["mix_lambda"]) == pytest.approx(lam)
    assert torch.equal(out["label_mix"], b["label"][perm])
    logits = torch.randn(6, 3, generator=torch.Generator().manual_seed(2))
    # the mixed labels' CE: lam * CE(y_i) + (1 - lam) * CE(y_j), averaged over the batch
    reference = sum(-lam * F.log_softmax(logits[i], 0)[b["label"][i]]
                    - (1 - lam) * F.log_softmax(logits[i], 0)[b["label"][int(perm[i])]] for i in range(6)) / 6
    assert float(label_loss(logits, out)) == pytest.approx(float(reference), rel=1e-6)


def test_cut_regions_fit_inside_and_cover_the_stated_fraction():
    mask, fraction = cut_regions(50, (2, 7, 9), "box", 0.3, torch.Generator().manual_seed(0))
    h, w = round(7 * 0.3 ** 0.5), round(9 * 0.3 ** 0.5)
    assert fraction == h * w / 63
    assert all(int(m.sum()) == 2 * h * w for m in mask)  # every channel, the same box
    mask, fraction = cut_regions(50, (1, 4, 20), "time", 0.25, torch.Generator().manual_seed(0))
    assert fraction == 5 / 20 and all(int(m.sum()) == 4 * 5 for m in mask)
    assert mask[:, :, 0].eq(mask[:, :, 3]).all()  # all frequencies cut alike


def test_cutmix_config_errors():
    with pytest.raises(ConfigError, match=r"train\.cutmix: set either mixup or cutmix"):
        parse_config({**BASE, "train": {"mixup": 0.2, "cutmix": 1.0}})
    with pytest.raises(ConfigError, match=r"train\.cutmix: modality 'x' is vector data"):
        from mmdistill.data.dataset import ModalitySpec
        from mmdistill.distill.engine import check_train_options
        check_train_options(TrainConfig(cutmix=1.0), {"x": ModalitySpec("x", "vector", (4,))})


# --- what the teachers see ------------------------------------------------------------------
def test_consistent_teacher_sees_exactly_the_student_input_and_same_sees_it_whole_but_mixed_alike():
    b = batch()
    common = dict(augment=AUGMENT, modality_dropout={"audio": 0.5}, time_shift={"audio": 0.2}, mixup=0.4)
    torch.manual_seed(3)
    student, teacher = training_inputs(b, TrainConfig(augment_teacher="consistent", **common), KINDS,
                                       torch.Generator().manual_seed(1), torch.Generator().manual_seed(2))
    assert all(torch.equal(student[m], teacher[m]) for m in KINDS)
    assert torch.equal(student["mix_lambda"], teacher["mix_lambda"])
    # the reference: the same draws, step by step
    torch.manual_seed(3)
    cfg = TrainConfig(augment_teacher="same", **common)
    student_same, teacher_same = training_inputs(b, cfg, KINDS, torch.Generator().manual_seed(1),
                                                 torch.Generator().manual_seed(2))
    torch.manual_seed(3)
    mix_generator = torch.Generator().manual_seed(2)
    augmented = augment_batch(b, cfg.augment, torch.Generator().manual_seed(1))
    dropped = time_shift(modality_dropout(augmented, cfg.modality_dropout, mix_generator), cfg.time_shift, mix_generator)
    perm, lam = draw_mixup(dropped, 0.4, mix_generator)
    assert torch.equal(student_same["audio"], apply_mixup(dropped, perm, lam)["audio"])
    assert torch.equal(teacher_same["audio"], apply_mixup(augmented, perm, lam)["audio"])  # whole, aligned, same mix
    assert torch.equal(student["audio"], student_same["audio"])  # the student's input does not depend on the option
    assert not torch.equal(teacher_same["audio"], student_same["audio"])


# --- the view cache -------------------------------------------------------------------------
VIEWS_CFG = dict(augment=AUGMENT, augment_teacher="consistent", modality_dropout={"audio": 0.3})


def test_batched_views_equal_each_sample_regenerated_alone_from_its_seed():
    """The reference: each sample through the pipeline alone, every draw from
    torch.Generator().manual_seed(view_seed(i, k))."""
    data = tiny_data()
    cfg = TrainConfig(view_cache={"views": 4}, augment=AUGMENT, augment_teacher="same",
                      modality_dropout={"audio": 0.5, "image": 0.5}, time_shift={"audio": 0.2})
    views = Views(cfg, KINDS, len(data.train), seed=3)
    full = next(iter(data.train.loader(40)))
    chosen = torch.arange(40) % 4
    student, teacher = views.make(full, chosen)
    for b in range(40):
        alone = {k: ({m: t[b:b + 1] for m, t in v.items()} if isinstance(v, dict) else v[b:b + 1]) for k, v in full.items()}
        g = torch.Generator().manual_seed(views.view_seed(b, b % 4))
        s_ref, t_ref = training_inputs(alone, cfg, KINDS, g, g)
        for m in KINDS:
            assert torch.equal(student[m][b:b + 1], s_ref[m]) and torch.equal(teacher[m][b:b + 1], t_ref[m])
            assert torch.equal(student["present"][m][b:b + 1], s_ref["present"][m])
    dropped = sum(int((~student["present"][m]).sum()) for m in KINDS)
    assert dropped > 0 and all(bool(teacher["present"][m].all()) for m in KINDS)  # same: teachers see samples whole


def test_a_view_is_a_function_of_sample_view_and_seed_alone():
    data = tiny_data()
    cfg = TrainConfig(view_cache={"views": 4}, **VIEWS_CFG)
    views = Views(cfg, KINDS, len(data.train), seed=3)
    full = next(iter(data.train.loader(20)))
    student_a, _ = views.make(full, torch.full((20,), 2))
    part = next(iter(data.train.loader(20, sampler=[7, 3, 11])))
    student_b, teacher_b = views.make(part, torch.tensor([2, 2, 1]))
    assert torch.equal(student_b["image"][0], student_a["image"][7]) and torch.equal(student_b["audio"][1], student_a["audio"][3])
    assert not torch.equal(student_b["image"][2], student_a["image"][11])  # another view
    assert torch.equal(student_b["audio"], teacher_b["audio"])  # consistent: the teacher saw that view
    # the per-epoch choice: seeded, uniform over the K views, different across epochs
    assert torch.equal(views.choice(0), Views(cfg, KINDS, len(data.train), seed=3).choice(0))
    assert not torch.equal(views.choice(0), views.choice(1))
    assert set(views.choice(0).tolist()) == {0, 1, 2, 3}


def _teacher(data):
    torch.manual_seed(0)
    teacher = model(data, [8])
    train(teacher, data, TrainConfig(epochs=1, batch_size=50, progress=False), device="cpu")
    return teacher


def _distil(data, teacher, view_cache, run_dir=None, terms=None, **options):
    torch.manual_seed(1)
    student = model(data, [4])
    cfg = TrainConfig(epochs=2, batch_size=50, progress=False, view_cache=view_cache, **{**VIEWS_CFG, **options})
    result = distill(student, teacher, data, terms=terms or [{"name": "kd", "temperature": 2.0},
                                                            {"name": "sp", "student": "encoders.image",
                                                             "teacher": "encoders.image"}],
                     cfg=cfg, device="cpu", seed=3, run_dir=run_dir)
    return result, student.state_dict()


def test_view_cache_equals_online_teaching_on_the_same_views():
    """fp32 storage of logits and a hooked feature: the student of online teaching on the same
    views to 1e-5; the teacher runs once per (sample, view) instead of once per step."""
    data = tiny_data()
    teacher = _teacher(data)
    calls = []
    handle = teacher.register_forward_pre_hook(lambda m, args: calls.append(args[0]["label"].shape[0]))
    cached, state_cached = _distil(data, teacher, {"views": 3, "dtype": "float32", "storage": "memory"})
    built = sum(calls)
    calls.clear()
    online, state_online = _distil(data, teacher, {"views": 3, "cache": False})
    handle.remove()
    assert built == 3 * len(data.train) + 50  # K views of each sample, plus setup's one batch
    assert sum(calls) == 2 * len(data.train) + 50  # online: every sample of both epochs
    assert cached.view_cache_seconds > 0 and online.view_cache_seconds == 0
    worst = max(float((state_cached[k] - state_online[k]).abs().max()) for k in state_cached if state_cached[k].numel())
    assert worst <= 1e-5
    for a, b in zip(cached.history, online.history):
        assert a["train_loss"] == pytest.approx(b["train_loss"], rel=1e-5)


def test_float16_mmap_view_cache_is_close_and_its_files_are_gone(tmp_path):
    data = tiny_data()
    teacher = _teacher(data)
    _, exact = _distil(data, teacher, {"views": 2, "cache": False})
    result, half = _distil(data, teacher, {"views": 2, "dtype": "float16", "storage": "mmap"}, run_dir=tmp_path)
    assert result.view_cache_bytes > 0
    assert max(float((exact[k] - half[k]).abs().max()) for k in exact if exact[k].numel()) < 1e-2
    assert not any(p.name.startswith("teacher-cache-") for p in tmp_path.iterdir())


def test_topk_storage_keeps_the_top_logits_and_fills_the_rest_with_their_mean():
    logits = torch.randn(5, 10, generator=torch.Generator().manual_seed(0))
    cache = ViewCache(torch.arange(5), 5, 2, storage="memory", dtype="float32", topk=3)
    cache.write(torch.arange(5), torch.ones(5, dtype=torch.long), [{"logits": logits}])
    back = cache.read(torch.tensor([4, 0]), torch.tensor([1, 1]), "cpu")[0]["logits"]
    for row, i in zip(back, (4, 0)):
        order = logits[i].argsort(descending=True)
        assert torch.allclose(row[order[:3]], logits[i][order[:3]])
        assert torch.allclose(row[order[3:]], logits[i][order[3:]].mean().expand(7), atol=1e-6)
    with pytest.raises(ConfigError, match="train.view_cache.topk: 10 must be less than teacher 0's 10 logits"):
        ViewCache(torch.arange(5), 5, 1, storage="memory", dtype="float32", topk=10).write(
            torch.arange(5), torch.zeros(5, dtype=torch.long), [{"logits": logits}])


def test_view_cache_refuses_what_it_cannot_serve():
    base = {**BASE, "train": {"augment": {"image": [{"type": "translate"}]},
                                                     "view_cache": {"views": 4}}}
    for extra, message in (({"mixup": 0.2}, "cannot serve mixup or cutmix"),
                           ({"cutmix": 1.0}, "cannot serve mixup or cutmix"),
                           ({"augment_teacher": "clean"}, "with augment_teacher: clean"),
                           ({"augment": {}}, "no augmentation to make views with"),
                           ({"view_cache": {"views": 0}}, r"train\.view_cache\.views"),
                           ({"view_cache": {"dtype": "int8"}}, r"train\.view_cache\.dtype")):
        raw = json.loads(json.dumps(base))
        raw["train"].update(extra)
        with pytest.raises(ConfigError, match=message):
            parse_config(raw)


def test_view_cache_run_resumes_to_the_uninterrupted_weights(tmp_path, monkeypatch):
    data = tiny_data()
    teacher = _teacher(data)
    spec = {"views": 3, "dtype": "float32"}
    for name in ("whole", "cut"):
        (tmp_path / name).mkdir()
    _, whole = _distil(data, teacher, spec, run_dir=tmp_path / "whole")
    save_state = Trainer.save_state

    def stop_after_first_epoch(self, *args):
        save_state(self, *args)
        raise Interrupted(signal.SIGTERM)

    monkeypatch.setattr(Trainer, "save_state", stop_after_first_epoch)
    with pytest.raises(Interrupted):
        _distil(data, teacher, spec, run_dir=tmp_path / "cut")
    monkeypatch.undo()
    torch.manual_seed(1)
    student = model(data, [4])
    cfg = TrainConfig(epochs=2, batch_size=50, progress=False, view_cache=spec, **VIEWS_CFG)
    distill(student, teacher, data, terms=[{"name": "kd", "temperature": 2.0},
                                           {"name": "sp", "student": "encoders.image", "teacher": "encoders.image"}],
            cfg=cfg, device="cpu", seed=3, run_dir=tmp_path / "cut", resume=True)
    resumed = student.state_dict()
    assert all(torch.equal(whole[k], resumed[k]) for k in whole)
