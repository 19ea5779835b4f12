"""The demo's contract: summary.json keys, the student budget, and the plain synthetic fallback."""
import json

import torch

from mmdistill.config import parse_config
from mmdistill.demo import recipe, run_demo
from mmdistill.models import build_model, count_parameters

torch.set_num_threads(1)


def test_packaged_recipes_keep_the_student_under_a_tenth_of_the_teacher(av_clean):
    train, _, _ = av_clean
    specs = train.specs
    teacher = build_model(parse_config(recipe("av_digits_teacher")).model, specs, 10)
    student = build_model(parse_config(recipe("av_digits_student")).model, specs, 10)
    assert count_parameters(student) * 10 <= count_parameters(teacher)


def test_demo_falls_back_to_synthetic_data_and_says_so(tmp_path, monkeypatch):
    from mmdistill.data import fsdd, mnist

    monkeypatch.setattr(fsdd, "ARCHIVE_URL", (tmp_path / "offline" / "fsdd.tar.gz").as_uri())
    monkeypatch.setattr(mnist, "MIRRORS", [(tmp_path / "offline").as_uri() + "/"])
    messages = []
    summary = run_demo(tmp_path / "demo", quick=True, device="cpu", data_root=str(tmp_path / "empty"),
                       progress=False, log=messages.append,
                       overrides=["train.epochs=1"])
    assert summary["synthetic"] is True and summary["dataset"] == "synthetic"
    assert any("SYNTHETIC" in m for m in messages)
    written = json.loads((tmp_path / "demo" / "summary.json").read_text())
    for key in ("teacher", "student_scratch", "student_distilled"):
        assert 0 <= written[key]["accuracy"] <= 1 and written[key]["params"] > 0
    assert written["student_distilled"]["params"] * 10 <= written["teacher"]["params"]
    assert json.loads((tmp_path / "demo" / "run.json").read_text())["status"] == "complete"
    report = (tmp_path / "demo" / "report.html").read_text()  # the demo writes its report
    assert all(f"{name}</td>" in report for name in ("teacher", "student_scratch", "student_distilled"))
