"""The demo's contract: summary.json keys, the student budget, teacher reuse, and a clear stop without data."""
import json

import pytest
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


def test_quick_recipes_are_the_ones_chosen_at_the_quick_budget():
    """--quick: an 8-epoch teacher and 12-epoch students on half the pairs; the student distils with
    DIST on unaugmented inputs (the teacher's outputs cached once), its twin is plain scratch on the
    same inputs (benchmarks/results/demo_recipe_quick8.json)."""
    from mmdistill.config import apply_overrides
    from mmdistill.demo import QUICK_STUDENT, QUICK_TEACHER, SCRATCH_TWIN, scratch_recipe

    teacher = parse_config(apply_overrides(recipe("av_digits_teacher"), QUICK_TEACHER))
    student_raw = apply_overrides(recipe("av_digits_student"), QUICK_STUDENT)
    student = parse_config(student_raw)
    assert (teacher.train.epochs, student.train.epochs) == (8, 12)
    assert teacher.data.pairs_per_recording == student.data.pairs_per_recording == 2
    assert [term.name for term in student.distill.terms] == ["dist"]
    assert student.train.augment == {} and student.train.view_cache is None
    twin = scratch_recipe(student_raw, SCRATCH_TWIN)  # as run_comparison builds the twin
    assert "distill" not in twin and parse_config(twin).train == student.train


def test_demo_without_data_stops_with_one_line_on_how_to_get_it(tmp_path, monkeypatch):
    from mmdistill.cli import main
    from mmdistill.data import fsdd, mnist

    monkeypatch.setattr(fsdd, "ARCHIVE_URL", (tmp_path / "offline" / "fsdd.tar.gz").as_uri())
    monkeypatch.setattr(mnist, "MIRRORS", [(tmp_path / "offline").as_uri() + "/"])
    with pytest.raises(SystemExit) as exit_info:
        main(["demo", "--quick", "--device", "cpu", "--data-root", str(tmp_path / "empty"),
              "--out", str(tmp_path / "demo")])
    assert exit_info.value.code == 2
    assert not (tmp_path / "demo").exists()


TINY = ["train.epochs=1", "data.pairs_per_recording=1", "model.encoders.image.channels=[4]",
        "model.encoders.audio.channels=[4]", "model.fusion={type: concat}"]


def test_demo_reuses_a_finished_teacher_with_the_same_recipe_and_seed(tmp_path, monkeypatch, fifth_data_root):
    monkeypatch.setenv("MMDISTILL_CACHE", str(tmp_path / "cache"))
    import mmdistill.demo

    packaged_recipe = mmdistill.demo.recipe

    def two_views(name: str) -> dict:  # the student's teacher cache with 2 views, not 8: a quicker test
        raw = packaged_recipe(name)
        if "view_cache" in raw["train"]:
            raw["train"]["view_cache"] = {"views": 2}
        return raw

    monkeypatch.setattr(mmdistill.demo, "recipe", two_views)
    runs = []
    for attempt in range(2):
        messages = []
        runs.append(run_demo(tmp_path / f"demo{attempt}", device="cpu", data_root=str(fifth_data_root), progress=False,
                             log=messages.append, overrides=TINY))
        reused = any("reusing the teacher" in str(m) for m in messages)
        assert reused == (attempt == 1)
    assert runs[0]["teacher"]["accuracy"] == runs[1]["teacher"]["accuracy"]
    written = json.loads((tmp_path / "demo1" / "summary.json").read_text())
    for key in ("teacher", "student_scratch", "student_distilled"):
        assert 0 <= written[key]["accuracy"] <= 1 and written[key]["params"] > 0
        assert written[key]["macs"] > 0 and written[key]["onnx_ms_b1"] > 0
    export = tmp_path / "demo1" / "student_distilled" / "export"
    assert (export / "model.onnx").is_file() and (export / "model.json").is_file()
    assert written["export"]["max_abs_diff"] <= 1e-4
    record = json.loads((tmp_path / "demo1" / "run.json").read_text())
    assert (record["status"], record["kind"]) == ("complete", "demo")
    assert record["artefacts"] == ["student_distilled/", "student_scratch/", "summary.json", "teacher/"]
    roles = {name: json.loads((tmp_path / "demo1" / name / "run.json").read_text())["role"]
             for name in ("teacher", "student_scratch", "student_distilled")}  # the reused teacher's too
    assert roles == {"teacher": "teacher", "student_scratch": "scratch", "student_distilled": "student"}
    assert json.loads((export / "run.json").read_text())["kind"] == "export"
    # the twin trains on the recipe's augmentation drawn afresh (no teacher cache); the distilled
    # student reads the teacher on the same kind of augmented views, from the view cache
    packaged = parse_config(packaged_recipe("av_digits_student")).train
    trained = {name: json.loads((tmp_path / "demo1" / name / "run.json").read_text())["config"]["train"]
               for name in ("student_scratch", "student_distilled")}
    assert packaged.augment and packaged.view_cache is not None
    assert trained["student_scratch"]["augment"] == trained["student_distilled"]["augment"] == \
        packaged.model_dump()["augment"]
    assert trained["student_scratch"]["view_cache"] is None
    assert trained["student_distilled"]["view_cache"]["views"] == 2
    assert trained["student_distilled"]["augment_teacher"] == packaged.augment_teacher
    # another seed is another teacher
    messages = []
    run_demo(tmp_path / "demo2", seed=1, device="cpu", data_root=str(fifth_data_root), progress=False,
             log=messages.append, overrides=TINY)
    assert not any("reusing the teacher" in str(m) for m in messages)
    report = (tmp_path / "demo1" / "report.html").read_text()  # the demo writes its report
    assert all(f"{name}</td>" in report for name in ("teacher", "student_scratch", "student_distilled"))


def test_teacher_key_ignores_last_bit_differences_in_data_statistics():
    """Standardisation means computed with another thread count differ in their last bits; the
    same recipe and data must still find the same cached teacher."""
    from mmdistill.demo import teacher_key

    cfg = parse_config(recipe("av_digits_teacher"))
    info = {"dataset": "av_digits", "train_samples": 9720, "standardise": {"image": {"mean": 0.13088330626487732}}}
    nudged = {**info, "standardise": {"image": {"mean": 0.13088330626487735}}}
    other = {**info, "train_samples": 9719}
    assert teacher_key(cfg, info) == teacher_key(cfg, nudged) != teacher_key(cfg, other)


@pytest.mark.parametrize("quick", [True, False])
def test_the_quick_demo_says_it_does_not_measure_what_distillation_is_worth(quick):
    """A level or losing --quick run is read with its budget in mind: the summary says where the
    measurement is; the full demo does not add that line."""
    from rich.console import Console

    from mmdistill.demo import print_summary

    model = {"accuracy": 0.85, "params": 12266}
    summary = {"dataset": "av_digits", "quick": quick, "teacher": {"accuracy": 0.94, "params": 515659},
               "student_scratch": model, "student_distilled": {**model, "teacher_agreement": 0.88}}
    console = Console(record=True, width=200)
    print_summary(summary, console)
    text = console.export_text()
    assert "did not help on this seed: +0.00" in text
    assert ("--quick shows the workflow" in text) == quick
