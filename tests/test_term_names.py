"""Logs and reports name a distillation term by its loss and, where several share a loss, by what
it reads (``nst[audio]``), never by a position (``nst_1``)."""
import json

import torch

torch.set_num_threads(1)

from mmdistill.api import distill  # noqa: E402
from mmdistill.config import TrainConfig  # noqa: E402
from mmdistill.data import DATASETS, DataSplits, parse_options  # noqa: E402
from mmdistill.distill.tasks import Term, term_keys  # noqa: E402
from mmdistill.losses import build_loss  # noqa: E402
from mmdistill.models import build_model  # noqa: E402

MODEL = {"encoders": {"image": {"type": "conv", "channels": [4]}, "audio": {"type": "conv", "channels": [4]}},
         "fusion": {"type": "concat"}}


def feature(name, modality, teacher=0):
    path = f"encoders.{modality}.features"
    return Term(name, build_loss(name), student_path=path, teacher_path=path, teacher=teacher)


def test_a_loss_used_once_keeps_its_name():
    assert term_keys([Term("kd", build_loss("kd")), feature("nst", "audio")], ["teacher0"]) == ["kd", "nst"]


def test_shared_losses_are_named_by_modality_teacher_or_path():
    terms = [feature("nst", "audio"), feature("nst", "image"),
             Term("kd", build_loss("kd"), teacher=0), Term("kd", build_loss("kd"), teacher=1),
             Term("fitnet", build_loss("fitnet"), student_path="fusion", teacher_path="fusion", teacher=0),
             Term("fitnet", build_loss("fitnet"), student_path="fusion", teacher_path="encoders.audio.features",
                  teacher=0)]
    assert term_keys(terms, ["big", "small"]) == [
        "nst[big:audio]", "nst[big:image]", "kd[big]", "kd[small]",
        "fitnet[big:fusion]", "fitnet[big:fusion<-encoders.audio.features]"]
    # one teacher: its name says nothing
    assert term_keys(terms[:2], ["teacher0"]) == ["nst[audio]", "nst[image]"]


def test_terms_reading_the_same_thing_are_numbered():
    kd = [Term("kd", build_loss("kd", {"temperature": t})) for t in (1.0, 4.0)]
    assert term_keys(kd, ["teacher0"]) == ["kd[logits]#1", "kd[logits]#2"]
    assert term_keys(kd, ["a", "b"]) == ["kd[ensemble]#1", "kd[ensemble]#2"]


def test_the_metrics_file_names_each_nst_term_by_its_modality(tmp_path):
    builder = DATASETS.get("synthetic")
    train_set, test_set, info = builder(None, parse_options("synthetic", {"train_size": 32, "test_size": 8}), 0)
    data = DataSplits(train=train_set, val=None, test=test_set, info=info)
    torch.manual_seed(0)
    teacher = build_model(MODEL, data.specs, data.num_classes)
    student = build_model(MODEL, data.specs, data.num_classes)
    distill(student, teacher, data, terms=["kd", {"name": "nst", "student": "encoders.audio.features",
                                                  "teacher": "encoders.audio.features"},
                                           {"name": "nst", "student": "encoders.image.features",
                                            "teacher": "encoders.image.features"}],
            cfg=TrainConfig(epochs=1, batch_size=16, eval_batch_size=64, progress=False), device="cpu",
            run_dir=tmp_path)
    row = json.loads((tmp_path / "metrics.jsonl").read_text().splitlines()[-1])
    assert {"train_kd", "train_nst[audio]", "train_nst[image]"} <= set(row), sorted(row)
    assert not any(k.endswith("_1") or k.endswith("_2") for k in row), sorted(row)
