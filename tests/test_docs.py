"""docs/ is generated: the committed pages equal a fresh build from benchmarks/results/*.json, every
relative link resolves, templates hold no hand-typed result, and a claim the data no longer
supports stops the build."""
import importlib.util
import json
import re
import shutil

import pytest
import yaml

from conftest import REPO

DOCS = REPO / "docs"


def load_build():
    spec = importlib.util.spec_from_file_location("mmdistill_docs_build", DOCS / "build.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_committed_docs_equal_a_fresh_build(tmp_path):
    build = load_build()
    written = build.build(tmp_path)
    assert {p.name for p in written} == {p.name for p in DOCS.glob("*.md")} == set(build.pages())
    for page in written:
        assert (DOCS / page.name).read_text() == page.read_text(), (
            f"docs/{page.name} is stale: run `python docs/build.py` and commit the result")


def _slug(heading: str) -> str:
    """GitHub's anchor for a markdown heading."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def test_every_relative_link_points_to_an_existing_file_and_heading():
    pages = [REPO / "README.md", *sorted(DOCS.glob("*.md"))]
    checked = 0
    for page in pages:
        text = re.sub(r"```.*?```", "", page.read_text(), flags=re.S)
        for target in re.findall(r"\]\(([^)\s]+)\)", text):
            if re.match(r"[a-z]+://|mailto:", target):
                continue
            path, _, anchor = target.partition("#")
            dest = (page.parent / path).resolve() if path else page
            assert dest.exists(), f"{page.relative_to(REPO)}: link {target!r} points to a missing file"
            if anchor and dest.suffix == ".md":
                headings = {_slug(h) for h in re.findall(r"^#+ (.+)$", dest.read_text(), re.M)}
                assert anchor in headings, f"{page.relative_to(REPO)}: link {target!r}: no such heading"
            checked += 1
    assert checked >= 10


def test_templates_hold_no_hand_typed_results():
    """Numbers that look like results (a mean ± std, a percentage, a signed or 2-decimal number, a count with a
    thousands separator) appear only inside template expressions, which read the JSON (or, marked
    ``adhoc(...)``, quote a run that left no results file)."""
    pattern = re.compile(r"\d\s*±|\d\s*%|[+−-]\d+\.\d|\d\.\d\d|\d,\d{3}")
    for template in sorted((DOCS / "templates").glob("*.md")):
        text = template.read_text()
        for strip in (r"\{\{.*?\}\}", r"\{%.*?%\}", r"```.*?```", r"`[^`\n]*`"):
            text = re.sub(strip, "", text, flags=re.S)
        hits = [line.strip() for line in text.splitlines() if pattern.search(line)]
        assert not hits, f"{template.name}: hand-typed numbers: {hits}"


def test_a_claim_the_results_no_longer_support_stops_the_build(tmp_path):
    build = load_build()
    results = tmp_path / "results"
    shutil.copytree(build.RESULTS, results)
    gains = json.loads((results / "distillation_gains.json").read_text())
    run = gains["recipes"]["hinton"]["runs"][0]
    run["student_distilled"]["accuracy"] = run["student_scratch"]["accuracy"] - 0.01  # Hinton KD loses on one seed
    (results / "distillation_gains.json").write_text(json.dumps(gains))
    with pytest.raises(AssertionError, match="Hinton KD wins on every seed"):
        build.render("results.md", results)


def test_docs_yaml_snippets_validate():
    from mmdistill.config import parse_config
    from mmdistill.demo import recipe

    blocks = [b for page in DOCS.glob("*.md") for b in re.findall(r"```yaml\n(.*?)```", page.read_text(), re.S)]
    assert blocks
    for block in blocks:
        parse_config(recipe("av_digits_student") | yaml.safe_load(block))


def test_demo_recipe_ranges_read_the_plain_40_epoch_rows():
    """The overfitting sentence's train and test ranges are those of the unaugmented rows at the
    shortest schedule (a loop below once overwrote the test list with per-candidate means)."""
    build = load_build()
    dr = build.SOURCES["demo_recipe"](build.RESULTS)
    plain = [r for r in dr.rows if not r["overrides"] and r["epochs"] == min(x["epochs"] for x in dr.rows)]
    assert dr.test_range == (min(r["accuracy"] for r in plain), max(r["accuracy"] for r in plain))
    assert dr.train_range == (min(r["train_accuracy_last"] for r in plain), max(r["train_accuracy_last"] for r in plain))


def test_the_10x_reading_pairs_the_recipe_with_its_twin_on_the_seeds_both_ran(tmp_path):
    """results.md's 10x sentence: the longest schedule's recipe against its augmented twin, and each
    against its own 120-epoch run, paired by seed over the seeds both long runs have; a best epoch
    in the last tenth is named."""
    build = load_build()
    acc = {("scratch", 40): [0.90, 0.91], ("scratch", 120): [0.91, 0.92], ("kd_t2_aug_cached", 120): [0.92, 0.93],
           ("scratch_aug", 120): [0.915, 0.925], ("kd_t2_aug_cached", 400): [0.94, 0.92],
           ("scratch_aug", 400): [0.92, None]}  # the twin's seed 1 still running
    rows = [{"seed": seed, "candidate": name, "epochs": epochs, "accuracy": a, "val_accuracy": a,
             "best_epoch": 395 if (name, epochs) == ("scratch_aug", 400) else epochs // 2, "seconds": 6.0 * epochs,
             "train_accuracy_last": 1.0, "overrides": [] if name == "scratch" else ["x"], "kind": "k"}
            for (name, epochs), values in acc.items() for seed, a in enumerate(values) if a is not None]
    (tmp_path / "demo_recipe.json").write_text(json.dumps({"rows": rows}))
    x = build.SOURCES["demo_recipe"](tmp_path).tenx
    assert (x.epochs, x.times, x.seeds) == (400, 10, [0])
    assert x.recipe.gains == pytest.approx([2.0]) and x.recipe_vs_3x.gains == pytest.approx([2.0])
    assert x.twin_vs_3x.gains == pytest.approx([0.5]) and x.at_3x.gains == pytest.approx([0.5])
    assert x.late == ["scratch_aug"] and x.scratch_best_3x == [60, 60]
