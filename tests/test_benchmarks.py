"""The methods benchmark's protocol, end to end on real AV-Digits at a tiny size (a fifth of the
recordings: ``fifth_data_root``): weights are tuned on validation accuracy, the table runs each
method at its selected scale, parallel parts merge; and the KD capacity-gap benchmark's pairing of
each taught student with the scratch student."""
import json
import os
import subprocess
import sys

import pytest
from conftest import REPO

TINY = ["--threads", "1", "--set", "train.epochs=1", "--set", "data.pairs_per_recording=1"]


def run_benchmark(tmp_path, data_root, *args: str, script: str = "methods.py") -> dict:
    env = {**os.environ, "MMDISTILL_DATA": str(data_root)}
    subprocess.run([sys.executable, str(REPO / "benchmarks" / script), *args], check=True, env=env,
                   cwd=tmp_path, capture_output=True, text=True)
    return json.loads((tmp_path / f"{args[args.index('--name') + 1]}.json").read_text())


def test_methods_benchmark_selects_scales_on_validation_and_reports_them(tmp_path, fifth_data_root):
    tuning = run_benchmark(tmp_path, fifth_data_root, "--seeds", "0", "--methods", "kd", "at", "--scales", "1", "0.01",
                     "--name", str(tmp_path / "tuning"), *TINY)
    for method in ("kd", "at"):
        rows = [r for r in tuning["runs"] if r["method"] == method]
        assert sorted(r["scale"] for r in rows) == [0.01, 1.0]
        best = max(rows, key=lambda r: (r["val_accuracy"], r["scale"]))
        assert tuning["selected_scales"][method] == best["scale"]
    at = [r for r in tuning["runs"] if r["method"] == "at" and r["scale"] == 0.01][0]
    assert at["weights"] == [10.0, 10.0]  # the scale multiplies every term's paper weight

    final = run_benchmark(tmp_path, fifth_data_root, "--seeds", "1", "--methods", "kd", "at", "--name", str(tmp_path / "seed1"),
                    "--select-from", str(tmp_path / "tuning.json"), *TINY)
    assert {r["method"]: r.get("scale") for r in final["runs"]} == {
        "teacher": None, "scratch": None, **tuning["selected_scales"]}

    merged = run_benchmark(tmp_path, fifth_data_root, "--merge", str(tmp_path / "tuning.json"), str(tmp_path / "seed1.json"),
                     "--select-from", str(tmp_path / "tuning.json"), "--methods", "kd", "at",
                     "--name", str(tmp_path / "merged"))
    kept = [(r["seed"], r["method"], r.get("scale")) for r in merged["runs"]]
    assert len(kept) == len(set(kept)) == 8  # teacher, scratch, kd, at on seeds 0 and 1
    assert all(scale == tuning["selected_scales"][m] for _, m, scale in kept if scale is not None)
    table = (tmp_path / "merged.md").read_text()
    assert "| teacher |" in table and "| scratch |" in table and "beat scratch" in table


def test_kd_gap_benchmark_pairs_each_taught_student_with_scratch(tmp_path, fifth_data_root):
    out = run_benchmark(tmp_path, fifth_data_root, "--seeds", "0", "--early-epochs", "1", "--name", str(tmp_path / "gap"), *TINY, script="kd_gap.py")
    teachers = ["teacher", "early-stopped teacher", "assistant", "twin"]
    assert [r["name"] for r in out["runs"] if r["role"] == "teacher"] == teachers
    assert [r["name"] for r in out["runs"] if r["role"] == "student"] == ["scratch", *teachers]
    by = {(r["role"], r["name"]): r for r in out["runs"]}
    student_params = by["student", "scratch"]["params"]
    assert by["teacher", "twin"]["params"] == student_params < by["teacher", "assistant"]["params"] < by["teacher", "teacher"]["params"]
    assert "teacher_agreement" in by["teacher", "assistant"]  # the assistant is distilled from the teacher
    assert all("teacher_agreement" in by["student", name] for name in teachers)
    table = (tmp_path / "gap.md").read_text()
    gain = by["student", "assistant"]["accuracy"] - by["student", "scratch"]["accuracy"]
    assert "| assistant | 18,314 |" in table and f"{100 * gain:+.2f} ± 0.00 ({int(gain > 0)}/1)" in table
    merged = run_benchmark(tmp_path, fifth_data_root, "--merge", str(tmp_path / "gap.json"), "--name", str(tmp_path / "merged"), script="kd_gap.py")
    assert merged["runs"] == out["runs"] and (tmp_path / "merged.md").read_text() == table


def test_frontier_chooses_each_students_method_on_validation_and_pairs_seeds(tmp_path, fifth_data_root):
    """Tiny teacher and schedule: seed 0 runs scratch and every candidate, seed 1 scratch and the
    method with the best seed-0 validation accuracy; the merge measures cost and writes the rows."""
    tiny = ["--threads", "1", "--set", "train.epochs=1", "--set", "data.pairs_per_recording=1",
            "--set", "model.encoders.image.channels=[4]", "--set", "model.encoders.audio.channels=[4]",
            "--set", "model.fusion={type: concat}"]
    students = ["conv[8,16] pool2", "conv[16,32] stride2 pool2"]
    part = run_benchmark(tmp_path, fifth_data_root, "--seeds", "0", "1", "--students", *students, "--methods", "kd", "at",
                         "--name", str(tmp_path / "part"), *tiny, script="frontier.py")
    runs = part["runs"]
    for student in students:
        seed0 = {r["method"]: r for r in runs if r["student"] == student and r["seed"] == 0}
        assert set(seed0) == {"scratch", "kd", "at"}
        chosen = max(("kd", "at"), key=lambda m: (seed0[m]["val_accuracy"], -("kd", "at").index(m)))
        assert {r["method"] for r in runs if r["student"] == student and r["seed"] == 1} == {"scratch", chosen}
    scratch = {(r["student"], r["seed"]): r for r in runs if r["method"] == "scratch"}
    assert scratch[students[0], 0]["params"] == 3834 and scratch[students[1], 0]["params"] == 12266
    run_benchmark(tmp_path, fifth_data_root, "--merge", str(tmp_path / "part.json"), "--out", str(tmp_path / "frontier"),
                  "--name", str(tmp_path / "part"), *tiny, script="frontier.py")
    merged = json.loads((tmp_path / "frontier.json").read_text())
    assert {(r["student"], r["seed"]) for r in merged["rows"]} == {(s, seed) for s in students for seed in (0, 1)}
    for row in merged["rows"]:
        assert row["macs"] > 0 and row["onnx_ms_b1"] > 0 and row["onnx_sps_b64"] > 0
        assert row["method"] == merged["chosen_on_validation"][row["student"]]
    teacher_params = next(r["params"] for r in runs if r["method"] == "teacher")
    assert merged["teacher"]["params"] == teacher_params and (tmp_path / "frontier.png").stat().st_size > 0
    assert "| teacher |" in (tmp_path / "frontier.md").read_text()


def test_frontier_shipped_protocol_trains_each_student_under_the_packaged_recipe_and_resumes(tmp_path, fifth_data_root,
                                                                                              monkeypatch):
    """``--protocol shipped``: each student under the packaged recipe (its augmentation and view cache)
    beside the demo's twin, the packaged student's model exactly the demo's; rows record best epochs,
    the teacher read and the machine; a second call reruns nothing, one with other --set is refused."""
    sys.path.insert(0, str(REPO / "benchmarks"))
    import frontier
    from mmdistill.config import parse_config
    from mmdistill.demo import recipe
    from mmdistill.runs import load_data

    args = frontier.argparse.Namespace(device="cpu", epochs=None, overrides=[])
    packaged = next(s for s, c in frontier.STUDENTS.items() if c["encoders"] == recipe("av_digits_student")["model"]["encoders"])
    distill, twin = frontier.shipped_recipes(packaged, 3, args)
    shipped = recipe("av_digits_student")
    assert list(distill["model"]["encoders"].items()) == list(shipped["model"]["encoders"].items())  # build order too
    assert distill["train"] == {**shipped["train"], "progress": False} and distill["seed"] == twin["seed"] == 3
    assert "distill" not in twin and twin["train"]["view_cache"] is None and twin["train"]["augment"] == shipped["train"]["augment"]
    other, _ = frontier.shipped_recipes("conv[8,16] pool2", 0, args)
    assert other["model"]["encoders"]["audio"]["channels"] == [8, 16] and other["train"]["view_cache"]

    tiny = ["--threads", "1", "--set", "train.epochs=2", "--set", "data.pairs_per_recording=1",
            "--set", "model.encoders.image.channels=[4]", "--set", "model.encoders.audio.channels=[4]"]
    call = ["--protocol", "shipped", "--seeds", "0", "--students", "conv[8,16] pool2", "--name", str(tmp_path / "part"), *tiny]
    part = run_benchmark(tmp_path, fifth_data_root, *call, script="frontier.py")
    by = {r["method"]: r for r in part["runs"]}
    assert set(by) == {"teacher", "scratch", "recipe"}
    for method in ("scratch", "recipe"):
        row = by[method]
        assert row["epochs"] == 2 and 1 <= row["best_epoch"] <= 2 and row["params"] == 3834
        assert row["teacher_accuracy"] == by["teacher"]["accuracy"] and row["machine"]["cores"] >= 1
    assert by["recipe"]["teacher_agreement"] is not None and by["scratch"]["teacher_agreement"] is None
    before = (tmp_path / "part.json").read_text()
    assert run_benchmark(tmp_path, fifth_data_root, *call, script="frontier.py") == part  # resumed: nothing rerun
    assert (tmp_path / "part.json").read_text() == before
    env = {**os.environ, "MMDISTILL_DATA": str(fifth_data_root)}
    refused = subprocess.run([sys.executable, str(REPO / "benchmarks" / "frontier.py"), *call, "--set", "train.epochs=3"],
                             env=env, cwd=tmp_path, capture_output=True, text=True)
    assert refused.returncode != 0 and "other arguments" in refused.stderr and "overrides" in refused.stderr

    run_benchmark(tmp_path, fifth_data_root, "--merge", str(tmp_path / "part.json"), "--out", str(tmp_path / "frontier"),
                  "--name", str(tmp_path / "part"), *tiny, script="frontier.py")
    merged = json.loads((tmp_path / "frontier.json").read_text())
    assert merged["protocol"] == "shipped" and [r["method"] for r in merged["rows"]] == ["recipe"]
    row = merged["rows"][0]
    assert (row["scratch_best_epoch"], row["distilled_best_epoch"]) == (by["scratch"]["best_epoch"], by["recipe"]["best_epoch"])
    table = (tmp_path / "frontier.md").read_text()
    assert "best epochs: scratch; distilled" in table and "(of 2)" in table and "retrained on another machine" not in table
    assert not (tmp_path / "part.runs").exists()  # each run's folder goes once its row is written

    # a part stopped in the middle of a run (killed after its last training state, before its
    # summary) continues that run when started again instead of training it anew
    monkeypatch.setenv("MMDISTILL_DATA", str(fifth_data_root))
    args = frontier.argparse.Namespace(device="cpu", epochs=None, overrides=[s for s in tiny[2:] if s != "--set"])
    _, twin = frontier.shipped_recipes("conv[8,16] pool2", 0, args)
    folder = tmp_path / "part.runs" / "seed0" / "conv[8,16]_pool2_scratch"
    whole, _, _ = frontier.resumable_run(twin, folder, load_data(parse_config(twin, "student")))
    for name in ("summary.json", "metrics.json"):
        (folder / name).unlink()
    (folder / "run.json").write_text(json.dumps({**json.loads((folder / "run.json").read_text()), "status": "running"}))
    held = json.loads((tmp_path / "part.json").read_text())
    held["runs"] = [r for r in held["runs"] if r["method"] != "scratch"]
    (tmp_path / "part.json").write_text(json.dumps(held))
    again = {r["method"]: r for r in run_benchmark(tmp_path, fifth_data_root, *call, script="frontier.py")["runs"]}
    assert again["scratch"]["resumed"] is True and "resumed" not in again["recipe"]
    assert again["scratch"]["seconds"] is None and again["recipe"]["seconds"] > 0  # a resumed run's time is unknown
    assert (again["scratch"]["accuracy"], again["scratch"]["best_epoch"]) == (whole["model"]["accuracy"], whole["best_epoch"])
    assert not (tmp_path / "part.runs").exists()


def test_demo_recipe_search_scores_candidates_on_validation_and_pairs_them_with_scratch(tmp_path, fifth_data_root):
    """benchmarks/demo_recipe.py at a tiny size: each candidate is a row with its validation and test
    accuracy, best epoch and steps; a second call with the same seed and epochs reruns nothing; the
    table pairs each distilled candidate with the same seed's scratch student."""
    sets = ["data.pairs_per_recording=1", "train.epochs=1"]
    set_args = [arg for s in sets for arg in ("--set", s)]
    args = ["--seeds", "0", "--epochs", "1", "--candidates", "scratch", "kd_t2", "--name", str(tmp_path / "search"), *set_args]
    first = run_benchmark(tmp_path, fifth_data_root, *args, script="demo_recipe.py")
    rows = {r["candidate"]: r for r in first["rows"]}
    assert set(rows) == {"scratch", "kd_t2"}
    for row in rows.values():
        assert row["epochs"] == 1 and row["best_epoch"] == 1 and row["steps"] > 0
        assert 0 <= row["val_accuracy"] <= 1 and 0 <= row["accuracy"] <= 1
    assert rows["kd_t2"]["terms"] == [{"name": "kd", "weight": 1.0, "temperature": 2.0}]
    again = run_benchmark(tmp_path, fifth_data_root, *args, script="demo_recipe.py")
    assert again["rows"] == first["rows"]  # resumable: nothing reran
    assert not (tmp_path / "search.runs").exists()  # the run directories go once their rows are written
    table = (tmp_path / "search.md").read_text()
    gain = rows["kd_t2"]["accuracy"] - rows["scratch"]["accuracy"]
    assert f"{100 * gain:+.2f} ({int(gain > 0)}/1)" in table
    assert "scratch twin **scratch**" in table and "recipe **kd_t2**" in table  # the only candidate of each kind
    other = tmp_path / "other.json"  # another seed's process: merged, not rerun
    assert first["overrides"] == sets
    other.write_text(json.dumps({"rows": [{**r, "seed": 1} for r in first["rows"]], "overrides": sets}))
    # a file holds the rows of one --set only: merging without the same overrides is refused
    done = subprocess.run([sys.executable, str(REPO / "benchmarks" / "demo_recipe.py"), "--name", str(tmp_path / "search"),
                           "--merge", str(other)], capture_output=True, text=True, cwd=tmp_path,
                          env={**os.environ, "MMDISTILL_DATA": str(fifth_data_root)})
    assert done.returncode == 2 and "holds rows run with --set" in done.stderr
    merged = run_benchmark(tmp_path, fifth_data_root, "--name", str(tmp_path / "search"), "--merge", str(other),
                           *set_args, script="demo_recipe.py")
    assert sorted((r["seed"], r["candidate"]) for r in merged["rows"]) == [
        (0, "kd_t2"), (0, "scratch"), (1, "kd_t2"), (1, "scratch")]
    assert "seeds 0, 1" in (tmp_path / "search.md").read_text()
    longer = tmp_path / "longer.json"  # a second schedule, better on validation: the packaged choice spans both
    longer.write_text(json.dumps({"rows": [{**r, "epochs": 2, "val_accuracy": r["val_accuracy"] + 0.01}
                                           for r in merged["rows"]], "overrides": sets}))
    run_benchmark(tmp_path, fifth_data_root, "--name", str(tmp_path / "search"), "--merge", str(longer), *set_args,
                  script="demo_recipe.py")
    text = (tmp_path / "search.md").read_text()
    assert "**Over every schedule** (validation's choice): scratch twin **scratch, 2 epochs**" in text
    assert "recipe **kd_t2, 2 epochs**" in text
    # a schedule run without plain scratch (the 10x one: the recipe and its augmented twin) is still
    # compared, against the scratch candidate it has
    tenx = tmp_path / "tenx.json"
    tenx.write_text(json.dumps({"rows": [{**r, "epochs": 3, "candidate": "scratch_aug" if r["candidate"] == "scratch"
                                          else r["candidate"], "val_accuracy": r["val_accuracy"] - 0.01}
                                         for r in merged["rows"]], "overrides": sets}))
    run_benchmark(tmp_path, fifth_data_root, "--name", str(tmp_path / "search"), "--merge", str(tenx), *set_args,
                  script="demo_recipe.py")
    text = (tmp_path / "search.md").read_text()
    assert "**3 epochs, seeds 0, 1**" in text and "scratch twin **scratch_aug**" in text
    assert "recipe **kd_t2, 2 epochs**" in text  # still the best on validation over every schedule


def test_merging_parts_keeps_one_row_per_cell_and_refuses_a_cell_run_twice(monkeypatch):
    """_common.merge_rows, behind every benchmark's --merge: the same row twice collapses, a cell two
    processes ran with different results is an error naming both files (a mean over both would count
    the seed twice) unless the benchmark says which to keep."""
    monkeypatch.syspath_prepend(str(REPO / "benchmarks"))
    from _common import merge_rows

    key = lambda r: (r["seed"], r["model"])  # noqa: E731
    a = [{"seed": 0, "model": "kd", "acc": 0.9}, {"seed": 0, "model": "teacher", "acc": 0.97}]
    b = [{"seed": 1, "model": "kd", "acc": 0.8}, {"seed": 0, "model": "teacher", "acc": 0.97}]
    assert merge_rows([("a.json", a), ("b.json", b)], key) == [a[0], a[1], b[0]]
    clash = [{"seed": 0, "model": "kd", "acc": 0.7}]
    with pytest.raises(SystemExit, match=r"c\.json: \(0, 'kd'\) is also in a\.json"):
        merge_rows([("a.json", a), ("c.json", clash)], key)
    kept = merge_rows([("a.json", a), ("c.json", clash)], key, resolve=lambda old, new: max(old, new, key=lambda r: r["acc"]))
    assert kept == a  # resolved in place: the order of the first part is kept


def test_label_efficiency_lists_per_seed_columns_in_seed_order(monkeypatch):
    """A merge can put seed 1's row before seed 0's: the best-epoch and steps columns still follow
    the seeds column (sorted), not the order the rows arrived in."""
    monkeypatch.syspath_prepend(str(REPO / "benchmarks"))
    import label_efficiency

    rows = [{"label_fraction": 0.1, "seed": s, "model": "scratch", "accuracy": acc, "val_accuracy": acc,
             "best_epoch": epoch, "steps": 10 * epoch, "max_steps": 300, "converged": True}
            for s, acc, epoch in ((1, 80.0, 7), (0, 82.0, 3))]
    entry = label_efficiency.summarise(rows)["0.1"]["models"]["scratch"]
    assert entry["seeds"] == [0, 1] and entry["best_epochs"] == [3, 7] and entry["steps"] == [30, 70]
