"""Label efficiency on AV-Digits ``hard``: what a teacher's knowledge is worth where labels are scarce.

For each label fraction f (``data.label_fraction``: a stratified, seeded fraction of the training
labels is kept, the rest of the training split becomes unlabelled) and each seed:

* ``teacher``: the packaged teacher recipe (recipes/av_digits_teacher.yaml), trained on the
  labelled part only. At f = 1 it is the recipe as packaged (20 epochs; reused from
  ``$MMDISTILL_CACHE/teachers/`` like the demo's). At f < 1 it takes a fixed number of optimisation
  steps (``--teacher-steps``) instead of 20 epochs, which would be 3 steps at f = 0.02; to keep the
  number of validation passes small, the labelled set is repeated within an epoch.
* students, all at the packaged student size (recipes/av_digits_student.yaml), each trained for
  the same number of optimisation steps (``--student-steps``), best epoch on validation:
  - ``scratch``: cross-entropy on the labelled part only;
  - ``pseudo_label``: self-training baseline, cross-entropy on the labelled part plus the
    unlabelled samples on which the teacher's confidence max softmax is >= tau, labelled with the
    teacher's class; tau from ``--thresholds`` picked by the student's validation accuracy;
  - ``distilled``: CE on the labelled samples + KD (T = 4, weight 1, Hinton et al. 2015) on
    every sample, labelled and unlabelled (the transfer set);
  - ``distilled_feature``: as ``distilled`` plus the packaged student recipe's feature terms, NST
    (Huang & Wang 2017) on each modality's last convolutional map, weight 0.5 each, on every sample.
  The teacher's outputs on the training split are computed once per (fraction, seed) and serve
  every student (the engine's teacher cache, shared).

The validation split (10% of the training recordings, as in the recipes) keeps its labels at
every fraction: model selection (best epoch, the pseudo-label threshold) sees more labels than
training does at small fractions, equally for every model.

    python benchmarks/label_efficiency.py            # writes benchmarks/results/label_efficiency.{md,json,png}
    # or in two processes, then merged (as the committed results were run):
    python benchmarks/label_efficiency.py --fractions 0.1 0.02 1.0 --name benchmarks/results/label_efficiency_parts/a
    python benchmarks/label_efficiency.py --fractions 0.05 0.25 --name benchmarks/results/label_efficiency_parts/b
    python benchmarks/label_efficiency.py --merge benchmarks/results/label_efficiency_parts/{a,b}.json

Results are appended to the JSON after every model, and a second run resumes: finished
(fraction, seed, model) rows are kept, not run again.
"""
from __future__ import annotations

import argparse
import json
import math
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from _common import RESULTS, markdown_table, mean_std

from mmdistill import api
from mmdistill.checkpoint import load_checkpoint
from mmdistill.config import DataConfig, LossTermConfig, TrainConfig, apply_overrides, parse_config
from mmdistill.data import DATASETS, build_data, data_root, parse_options
from mmdistill.data.dataset import DataSplits, MultimodalDataset
from mmdistill.demo import recipe, train_or_reuse_teacher
from mmdistill.distill.engine import Trainer
from mmdistill.distill.hooks import OUTPUT
from mmdistill.distill.tasks import DistillationTask
from mmdistill.evaluate import accuracy, agreement, predict
from mmdistill.models import build_model

FRACTIONS = (0.1, 1.0, 0.02, 0.05, 0.25)  # the goal's fraction first, then the cheap one, then the rest
MODELS = ("teacher", "scratch", "pseudo_label", "distilled", "distilled_feature")
KD = {"name": "kd", "weight": 1.0, "temperature": 4.0}


def feature_terms(student_raw: dict) -> list[dict]:
    """The packaged student recipe's distillation terms (NST on each modality's last map)."""
    return [dict(t) for t in student_raw["distill"]["terms"]]


def repeated(dataset: MultimodalDataset, samples: int) -> MultimodalDataset:
    """``dataset`` repeated r = max(1, round(samples / N)) times: an epoch of about ``samples`` samples."""
    r = max(1, round(samples / len(dataset)))
    return dataset if r == 1 else dataset.subset(np.tile(np.arange(len(dataset)), r), dataset.name)


def schedule(n: int, steps: int, evals: int, batch: int) -> tuple[int, int]:
    """(samples per epoch, epochs) so that about ``steps`` optimisation steps take ``evals`` epochs."""
    per_epoch = max(1, steps // evals) * batch
    r = max(1, round(per_epoch / n))
    epochs = max(1, round(steps / math.ceil(r * n / batch)))
    return per_epoch, epochs


class SharedTeacherTask(DistillationTask):
    """A distillation task served from teacher outputs computed once (the same teacher, frozen and
    in eval mode, on the same unaltered training samples, indexed alike), so several students
    trained on one split pay for one teacher pass."""

    shared: dict[str, torch.Tensor] = {}

    def cache_teacher_outputs(self, dataset, *, batch_size: int, device, **options) -> None:
        from mmdistill.distill.cache import TeacherCache

        if len(dataset) != len(next(iter(self.shared.values()))):
            raise RuntimeError("the shared teacher outputs are not of this training set")
        self.clear_cache()
        self._cache = TeacherCache(len(dataset))
        self._cache.write(torch.arange(len(dataset)), [self.shared])


def teacher_outputs(student, teacher, train, terms, device, batch_size: int) -> dict[str, torch.Tensor]:
    """The teacher's logits and the feature maps ``terms`` read, on every training sample (the
    engine's teacher cache, built once; ``student`` is not run)."""
    task = DistillationTask(student, teacher, api.make_terms(terms))
    task.cache_teacher_outputs(train, batch_size=batch_size, device=device)
    out = task._cache.arrays[0]
    task.teardown()
    return out


def fit_student(kind, scfg, data, teacher, shared, steps, evals, device, seed, terms=()):
    """(model, fit): ``supervised`` on the labelled samples of ``data.train`` (repeated to the epoch
    size), or ``distill`` over every training sample from the ``shared`` teacher outputs."""
    model = build_model(scfg.model, data.specs, data.num_classes, seed=seed)
    if kind == "supervised":
        train = data.train.labelled_only()
        per_epoch, epochs = schedule(len(train), steps, evals, scfg.train.batch_size)
        cfg = scfg.train.model_copy(update={"epochs": epochs})
        fit = api.train(model, DataSplits(repeated(train, per_epoch), data.test, data.val, data.info), cfg,
                        device=str(device), seed=seed, label="student")
        return model, fit
    per_epoch, epochs = schedule(len(data.train), steps, evals, scfg.train.batch_size)
    cfg = scfg.train.model_copy(update={"epochs": epochs})
    SharedTeacherTask.shared = shared
    task = SharedTeacherTask(model, teacher, api.make_terms(list(terms)), gamma=1.0)
    fit = Trainer(cfg, device=device, seed=seed, label="student").fit(task, data.train, data.val)
    return model, fit


def pseudo_labelled(train: MultimodalDataset, logits: torch.Tensor, tau: float) -> tuple[MultimodalDataset, dict]:
    """The labelled samples, plus the unlabelled ones the teacher predicts with confidence >= tau, with its class."""
    prob = torch.softmax(logits.float(), 1)
    conf, pred = prob.max(1)
    unlabelled = ~train.labelled
    take = unlabelled & (conf >= tau)
    labels = torch.where(take, pred, train.labels)
    out = MultimodalDataset(train.modalities, labels, num_classes=train.num_classes,
                            kinds={k: s.kind for k, s in train.specs.items()}, present=train.present,
                            groups=train.groups, name=train.name)
    return out, {"pseudo_labelled": int(take.sum()), "unlabelled": int(unlabelled.sum())}


def run_cell(fraction, seed, args, built, rows, save) -> None:
    done = {r["model"] for r in rows if r["label_fraction"] == fraction and r["seed"] == seed}
    if all(m in done or (m == "pseudo_label" and fraction >= 1) for m in MODELS):
        return
    device = api.resolve_device(args.device)
    common = [f"seed={seed}", f"device={args.device}", "train.progress=false", *args.overrides]
    if fraction < 1:
        common.append(f"data.label_fraction={fraction}")
    t_raw = apply_overrides(recipe("av_digits_teacher"), list(common))
    s_raw = apply_overrides(recipe("av_digits_student"), list(common))
    if args.data:
        t_raw["data"] = {**args.data, **({"label_fraction": fraction} if fraction < 1 else {})}
        s_raw["data"] = dict(t_raw["data"])
    tcfg, scfg = parse_config(t_raw, "teacher"), parse_config(s_raw, "student")
    data = build_data(tcfg.data, seed=seed, val_fraction=tcfg.train.val_fraction, built=built)
    labelled = data.train.num_labelled
    base = {"label_fraction": fraction, "seed": seed, "labelled": labelled, "unlabelled": len(data.train) - labelled,
            "student_steps": args.student_steps}
    start = time.perf_counter()

    # the teacher, on the labelled part only
    teacher_data = data
    if fraction < 1:
        train = data.train.labelled_only()
        per_epoch, epochs = schedule(len(train), args.teacher_steps, args.evals, tcfg.train.batch_size)
        tcfg = parse_config(apply_overrides(t_raw, [f"train.epochs={epochs}"]), "teacher")
        teacher_data = DataSplits(repeated(train, per_epoch), data.test, data.val,
                                  {**data.info, "teacher_epoch_samples": per_epoch})
    with tempfile.TemporaryDirectory() as tmp:
        summary = train_or_reuse_teacher(tcfg, teacher_data, Path(tmp) / "teacher", print, reuse=True)
        teacher = load_checkpoint(Path(tmp) / "teacher" / "best.pt", device)[0]
    if "teacher" not in done:
        save({**base, "model": "teacher", "accuracy": 100 * summary["model"]["accuracy"],
              "epochs": tcfg.train.epochs,
              "steps": tcfg.train.epochs * math.ceil(len(teacher_data.train) / tcfg.train.batch_size),
              "reused": summary.get("reused_from") is not None})
    teacher_acc = summary["model"]["accuracy"]
    terms_kd = [KD]
    terms_feat = [KD, *feature_terms(s_raw)]
    stub = build_model(scfg.model, data.specs, data.num_classes, seed=seed).to(device)
    shared = teacher_outputs(stub, teacher, data.train, terms_feat, device, tcfg.train.eval_batch_size)
    teacher_test, _ = predict(teacher, data.test, device=device, batch_size=tcfg.train.eval_batch_size)

    def record(name, model, fit, **extra):
        logits, labels = predict(model, data.test, device=device)
        save({**base, "model": name, "accuracy": 100 * accuracy(logits, labels),
              "val_accuracy": 100 * fit.best_val_accuracy if fit.best_val_accuracy is not None else None,
              "teacher_agreement": agreement(logits, teacher_test), "epochs": len(fit.history), **extra})

    steps, evals = args.student_steps, args.evals
    if "scratch" not in done:
        model, fit = fit_student("supervised", scfg, data, None, None, steps, evals, device, seed)
        record("scratch", model, fit, loss="ce (labelled)")
    if "distilled" not in done:
        model, fit = fit_student("distill", scfg, data, teacher, {OUTPUT: shared[OUTPUT]}, steps, evals, device, seed,
                                 terms_kd)
        record("distilled", model, fit, loss="ce (labelled) + kd T=4 w=1 (all)")
    if "distilled_feature" not in done:
        model, fit = fit_student("distill", scfg, data, teacher, shared, steps, evals, device, seed, terms_feat)
        record("distilled_feature", model, fit, loss="ce (labelled) + kd T=4 w=1 + nst w=0.5 per modality (all)")
    if "pseudo_label" not in done and fraction < 1:
        best = None
        for tau in args.thresholds:
            train, info = pseudo_labelled(data.train, shared[OUTPUT].cpu(), tau)
            model, fit = fit_student("supervised", scfg, DataSplits(train, data.test, data.val, data.info), None, None,
                                     steps, evals, device, seed)
            if best is None or fit.best_val_accuracy > best[1].best_val_accuracy:
                best = (model, fit, tau, info)
        model, fit, tau, info = best
        record("pseudo_label", model, fit, threshold=tau, thresholds=list(args.thresholds), **info,
               loss="ce (labelled + teacher's confident hard labels)")
    print(f"fraction {fraction} seed {seed}: teacher {100 * teacher_acc:.2f}, "
          f"done in {time.perf_counter() - start:.0f} s", flush=True)


# --- the report -----------------------------------------------------------------------------------
def by(rows, fraction, model) -> dict[int, float]:
    return {r["seed"]: r["accuracy"] for r in rows if r["label_fraction"] == fraction and r["model"] == model}


def summarise(rows: list[dict]) -> dict:
    """Per fraction: mean accuracy per model, gap closed per distilled model, wins vs pseudo-labelling
    (paired by seed)."""
    out = {}
    for f in sorted({r["label_fraction"] for r in rows}):
        entry = {"accuracy": {}, "gap_closed": {}, "wins_vs_pseudo_label": {}}
        for m in MODELS:
            values = list(by(rows, f, m).values())
            if values:
                mean, std = mean_std(values)
                entry["accuracy"][m] = {"mean": mean, "std": std, "seeds": len(values)}
        t, s, p = by(rows, f, "teacher"), by(rows, f, "scratch"), by(rows, f, "pseudo_label")
        for m in ("distilled", "distilled_feature"):
            d = by(rows, f, m)
            seeds = sorted(set(t) & set(s) & set(d))
            closed = [(d[k] - s[k]) / (t[k] - s[k]) for k in seeds if t[k] > s[k]]
            if closed:
                entry["gap_closed"][m] = {"per_seed": closed, "mean": float(np.mean(closed))}
            paired = sorted(set(d) & set(p))
            if paired:
                entry["wins_vs_pseudo_label"][m] = {"wins": sum(d[k] > p[k] for k in paired), "seeds": len(paired)}
        out[str(f)] = entry
    return out


def markdown(rows: list[dict], summary: dict, settings: dict) -> str:
    head = ["labels", *MODELS, "gap closed (distilled)", "gap closed (+NST)", "distilled > pseudo", "+NST > pseudo"]
    table = []
    for f, e in summary.items():
        cells = [f"{100 * float(f):g}%"]
        for m in MODELS:
            a = e["accuracy"].get(m)
            cells.append(f"{a['mean']:.2f} ± {a['std']:.2f}" if a else "n/a")
        for m in ("distilled", "distilled_feature"):
            g = e["gap_closed"].get(m)
            cells.append(f"{100 * g['mean']:.0f}%" if g else "n/a")
        for m in ("distilled", "distilled_feature"):
            w = e["wins_vs_pseudo_label"].get(m)
            cells.append(f"{w['wins']}/{w['seeds']}" if w else "n/a")
        table.append(cells)
    seeds = sorted({r["seed"] for r in rows})
    lines = [f"AV-Digits hard, test accuracy (%), mean ± std over seeds {seeds}; each student "
             f"{settings['student_steps']} optimisation steps, teachers at f < 1 {settings['teacher_steps']} steps "
             "(the packaged recipe at f = 1). Gap closed = (distilled - scratch) / (teacher - scratch), per seed, "
             "averaged; wins: seeds on which the distilled student beats pseudo-labelling (paired by seed). "
             "pseudo_label is n/a at 100% labels (nothing unlabelled).", "",
             markdown_table(head, table)]
    goal = summary.get("0.1")
    if goal and "distilled" in goal["gap_closed"] and "distilled" in goal["wins_vs_pseudo_label"]:
        g, w = goal["gap_closed"]["distilled"], goal["wins_vs_pseudo_label"]["distilled"]
        met = g["mean"] >= 0.5 and w["wins"] == w["seeds"] == 3
        lines += ["", f"Goal at 10% labels (close >= half the gap, beat pseudo-labelling on 3/3 seeds): "
                      f"{'met' if met else 'not met'}: the distilled student closes {100 * g['mean']:.0f}% of the gap "
                      f"(per seed {', '.join(f'{100 * c:.0f}%' for c in g['per_seed'])}) and beats pseudo-labelling "
                      f"on {w['wins']}/{w['seeds']} seeds."]
    return "\n".join(lines)


def plot(summary: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    fractions = [float(f) for f in summary]
    for m in MODELS:
        pts = [(float(f), e["accuracy"][m]) for f, e in summary.items() if m in e["accuracy"]]
        if pts:
            ax.errorbar([100 * f for f, _ in pts], [a["mean"] for _, a in pts], yerr=[a["std"] for _, a in pts],
                        marker="o", capsize=3, label=m)
    ax.set_xscale("log")
    ax.set_xticks([100 * f for f in fractions])
    ax.set_xticklabels([f"{100 * f:g}%" for f in fractions])
    ax.set_xlabel("training labels kept")
    ax.set_ylabel("test accuracy (%)")
    ax.set_title("AV-Digits hard: label efficiency")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--fractions", type=float, nargs="+", default=list(FRACTIONS))
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--teacher-steps", type=int, default=150)
    parser.add_argument("--student-steps", type=int, default=300)
    parser.add_argument("--evals", type=int, default=5, help="validation passes (epochs) per training")
    parser.add_argument("--thresholds", type=float, nargs="+", default=[0.5, 0.8, 0.95])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--data", type=json.loads, default=None,
                        help="a data section as JSON instead of the recipes' AV-Digits (e.g. for a smoke test)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], help="recipe override key=value")
    parser.add_argument("--name", default=str(RESULTS / "label_efficiency"), help="output path without suffix")
    parser.add_argument("--merge", nargs="+", default=None,
                        help="result files of parts run in parallel (same settings) to merge into --name")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    out = Path(args.name)
    out.parent.mkdir(parents=True, exist_ok=True)
    keys = ("teacher_steps", "student_steps", "evals", "thresholds", "overrides", "data")
    settings = {k: getattr(args, k) for k in keys}
    json_path = out.with_suffix(".json")
    rows: list[dict] = []
    if json_path.is_file():
        old = json.loads(json_path.read_text())
        if old.get("settings") == settings:
            rows = old["rows"]
            print(f"resuming: {len(rows)} rows from {json_path}")

    def write(figure: bool = False) -> None:
        summary = summarise(rows)
        json_path.write_text(json.dumps({"settings": settings, "rows": rows, "summary": summary}, indent=2) + "\n")
        out.with_suffix(".md").write_text(markdown(rows, summary, settings) + "\n")
        if figure:
            plot(summary, out.with_suffix(".png"))

    def save(row: dict) -> None:
        rows[:] = [r for r in rows if (r["label_fraction"], r["seed"], r["model"])
                   != (row["label_fraction"], row["seed"], row["model"])] + [row]
        write()

    if args.merge:
        for part in args.merge:
            old = json.loads(Path(part).read_text())
            if old["settings"] != settings:
                raise SystemExit(f"{part}: run with other settings than these ({old['settings']})")
            for row in old["rows"]:
                save(row)
        write(figure=True)
        print(out.with_suffix(".md").read_text())
        return
    # the dataset builder does not use the run seed (AV-Digits pairs with its own pairing_seed): built once
    data_raw = args.data or apply_overrides(recipe("av_digits_teacher"), list(args.overrides))["data"]
    dcfg = DataConfig.model_validate(data_raw)
    built = DATASETS.get(dcfg.name).builder(data_root(dcfg.root), parse_options(dcfg.name, dcfg.options), 0)
    if dcfg.name != "av_digits":
        built = None  # e.g. synthetic draws with the seed: build per seed
    # the first fraction on every seed, then seed by seed: a run cut short still has whole curves
    first, rest = args.fractions[0], args.fractions[1:]
    cells = [(first, seed) for seed in args.seeds] + [(f, seed) for seed in args.seeds for f in rest]
    for fraction, seed in cells:
        run_cell(fraction, seed, args, built, rows, save)
        write(figure=True)
    print((out.with_suffix(".md")).read_text())


if __name__ == "__main__":
    main()
