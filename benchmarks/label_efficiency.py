"""Label efficiency on AV-Digits ``hard``, with budgets that converge: what a teacher's knowledge
is worth where labels are scarce.

For each label fraction f (``data.label_fraction``: a stratified, seeded fraction of the training
labels is kept, the rest of the training split becomes unlabelled) and each seed, every model
below trains until validation accuracy stops improving (``train.early_stopping``: ``--patience``
epochs without improvement, at most ``--max-epochs`` epochs, the recipe's cosine schedule over
the maximum); each row records its best epoch, the epochs and optimisation steps it actually took,
and whether its best epoch fell in the last tenth of the schedule (not converged: flagged in the
table). Every student epoch is exactly ceil(N / 128) optimisation steps, N the size of the whole
training split (labelled and unlabelled), whatever data the student reads, so every student of a
cell has the same step budget (``max_steps``) and its steps are counted by the engine, not computed.

* ``teacher``: the packaged teacher recipe (recipes/av_digits_teacher.yaml) on the labelled part
  only, its epoch the labelled part repeated to about ``--teacher-epoch-steps`` steps, early stopping
  as above (reused from ``$MMDISTILL_CACHE/teachers/`` when trained before with the same settings);
  with ``--teacher-augment off on`` its augmentation is chosen on validation per seed, as scratch's.
* ``linear``: the simplest baseline a user would try first: multinomial logistic regression
  (scikit-learn, L-BFGS) on the standardised pixels and log-mel spectrogram, labelled part only;
  its inverse regularisation C chosen on validation from ``--linear-c``.
* students, all at the packaged student size (recipes/av_digits_student.yaml):
  - ``scratch``: cross-entropy on the labelled part (repeated to the epoch's size); its learning
    rate (``--scratch-lrs``) and whether it is augmented (image translations of 2 pixels, audio
    time shifts of 10%; or, ``--scratch-augment recipe``, the packaged recipe's augmentation)
    chosen on validation, per seed;
  - ``pseudo_label``: self-training baseline: cross-entropy on the labelled part plus the
    unlabelled samples whose teacher confidence (max softmax) is >= tau, labelled with the
    teacher's class; tau from ``--thresholds`` chosen on validation;
  - ``kd_one_batch``: one mixed batch of 128 drawn from every training sample: CE on its labelled
    members + KD (T = 4, weight 1, Hinton et al. 2015) on all of them (the previous benchmark's
    objective);
  - ``kd_t4`` / ``kd_t1``: separate batches (``train.labelled_batch_size: 128``): CE on a batch of
    128 labelled samples + KD at T = 4 / T = 1 on it and on a batch of 128 drawn from every
    training sample (the transfer batch);
  - ``kd_pseudo``: as ``kd_t4``, with the labelled batch drawn from the labelled samples and the
    teacher's confident pseudo-labels (pseudo_label's tau);
  - ``kd_consistent``: patient, consistent teaching as the packaged student recipe does it (its
    ``train.augment``, ``augment_teacher`` and ``view_cache``, and its distillation terms, KD at T = 2):
    every sample augmented, the teacher's outputs read from its cache of 8 seeded views per sample,
    one mixed batch of 128 (CE on its labelled members; a view cache draws one view per sample
    per epoch, so it does not take separate labelled batches), the benchmark's budget.
  The teacher's outputs on the (clean) training split are computed once per (fraction, seed) and serve
  every student but ``kd_consistent`` (``DistillationTask(precomputed_outputs=...)``, filling the engine's teacher cache).

The validation split (10% of the training recordings, as in the recipes) keeps its labels at
every fraction: model selection (best epoch, learning rate, augmentation, tau, C) sees more
labels than training does at small fractions, equally for every model. Nothing is chosen on test.

    python benchmarks/label_efficiency.py            # writes benchmarks/results/label_efficiency_converged.{md,json,png}
    # parts in parallel (any --fractions / --seeds / --models each), then merged:
    python benchmarks/label_efficiency.py --fractions 0.1 --seeds 0 --name benchmarks/results/label_efficiency_parts/s0
    python benchmarks/label_efficiency.py --merge benchmarks/results/label_efficiency_parts/s*.json
    # cheaper: seeds 1 and 2 reuse the scratch learning rate / augmentation and the pseudo-labelling
    # threshold chosen on seed 0's validation (recorded per row as chosen_on_seed)
    python benchmarks/label_efficiency.py --fractions 0.1 --seeds 1 --choices PARTS/s0.json --name PARTS/s1
    # the patient check: consistent teaching at a patient budget (120 epochs, the demo search's 3x
    # schedule) instead of the benchmark's, beside a scratch twin on the same (the recipe's) augmentation
    python benchmarks/label_efficiency.py --fractions 0.1 --models teacher linear scratch kd_consistent \
        --max-epochs 120 --patience 20 --scratch-lrs 0.003 --scratch-augment recipe \
        --choices none --name benchmarks/results/label_efficiency_patient
    # at 2% of the labels, better teachers: a patient teacher budget, every row of the cell retrained...
    python benchmarks/label_efficiency.py --fractions 0.02 --models teacher linear scratch kd_t4 kd_consistent \
        --max-epochs 120 --patience 20 --teacher-max-epochs 100 --teacher-patience 20 \
        --scratch-augment off on recipe --choices none --name benchmarks/results/label_efficiency_teacher
    # ...and the same with the teacher's augmentation chosen on validation (read against the twin above)
    python benchmarks/label_efficiency.py --fractions 0.02 --models teacher kd_t4 kd_consistent \
        --max-epochs 120 --patience 20 --teacher-max-epochs 100 --teacher-patience 20 --teacher-augment off on \
        --choices none --name benchmarks/results/label_efficiency_teacher_aug
    # at 10% of the labels, every row patient and the teacher's augmentation chosen on validation, one
    # part per seed (--seeds 0, 1, 2), then merged with the same settings flags
    python benchmarks/label_efficiency.py --fractions 0.1 --seeds 0 --models teacher linear scratch pseudo_label \
        kd_t4 kd_pseudo kd_consistent --max-epochs 120 --patience 20 --teacher-max-epochs 100 --teacher-patience 20 \
        --teacher-augment off on --scratch-augment off on recipe --choices none \
        --name benchmarks/results/label_efficiency_tenth_parts/s0
    python benchmarks/label_efficiency.py <the same settings flags> \
        --merge benchmarks/results/label_efficiency_tenth_parts/s*.json --name benchmarks/results/label_efficiency_tenth

Results are written after every model, and a second run with the same settings resumes: finished
(fraction, seed, model) rows are kept, not run again. The committed results of the earlier,
short-budget benchmark (label_efficiency.json, label_efficiency_long.json) stay as they were.
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

from _common import (RESULTS, TEACHING, machine, markdown_table, mean_std, merge_rows, plain_student_recipe,
                     result_file)

from mmdistill import api
from mmdistill.checkpoint import load_checkpoint
from mmdistill.config import DataConfig, apply_overrides, parse_config
from mmdistill.data import DATASETS, build_data, data_root, parse_options
from mmdistill.data.dataset import DataSplits, MultimodalDataset
from mmdistill.demo import recipe, train_or_reuse_teacher
from mmdistill.distill.engine import Trainer
from mmdistill.distill.hooks import OUTPUT
from mmdistill.distill.tasks import DistillationTask
from mmdistill.evaluate import accuracy, agreement, predict
from mmdistill.models import build_model

FRACTIONS = (0.1, 0.25, 0.05, 0.02, 1.0)  # the goal's fraction first
STUDENTS = ("scratch", "pseudo_label", "kd_one_batch", "kd_t4", "kd_t1", "kd_pseudo", "kd_consistent")
MODELS = ("teacher", "linear", *STUDENTS)  # the table's order
KD_ROWS = ("kd_t4", "kd_one_batch", "kd_t1", "kd_pseudo", "kd_consistent")  # the order they run in
#: the KD rows: (temperature, separate labelled and transfer batches, labelled batch with pseudo-labels)
KD_SPECS = {"kd_one_batch": (4.0, False, False), "kd_t4": (4.0, True, False), "kd_t1": (1.0, True, False),
            "kd_pseudo": (4.0, True, True)}
LOSSES = {"scratch": "ce (labelled)", "pseudo_label": "ce (labelled + teacher's confident hard labels)",
          "kd_one_batch": "one batch: ce (its labelled) + kd T=4 (all)",
          "kd_t4": "ce (labelled batch) + kd T=4 (labelled + transfer batch)",
          "kd_t1": "ce (labelled batch) + kd T=1 (labelled + transfer batch)",
          "kd_pseudo": "ce (labelled + confident pseudo-labelled batch) + kd T=4 (it + transfer batch)",
          "kd_consistent": "the packaged recipe's teaching: one batch, augmented, ce (its labelled) + its distill "
                           "terms (all, teacher outputs on the same view, from the view cache)"}
#: the scratch student's augmentation candidate (chosen on validation against none)
AUGMENT = {"image": [{"type": "translate", "pixels": 2}], "audio": [{"type": "time_shift", "fraction": 0.1}]}
#: ``--scratch-augment`` values -> what a row records: off/on (AUGMENT), or the packaged student
#: recipe's own augmentation (``recipe``: kd_consistent's, for a twin that sees the same inputs)
SCRATCH_AUGMENT = {"off": False, "on": True, "recipe": "recipe"}


def scratch_augment(recorded):
    """The ``train.augment`` of a scratch row's recorded augmentation (False, True or "recipe")."""
    if recorded == "recipe":
        return recipe("av_digits_student")["train"]["augment"]
    return AUGMENT if recorded else None


def models_at(fraction: float) -> tuple[str, ...]:
    """The rows of a fraction: nothing is unlabelled at f = 1, so no pseudo-labels or transfer batches."""
    return MODELS if fraction < 1 else ("teacher", "linear", "scratch", "kd_one_batch", "kd_consistent")


def resized(dataset: MultimodalDataset, size: int, seed: int) -> MultimodalDataset:
    """``dataset`` repeated (each copy in its own seeded order) and cut to exactly ``size`` samples,
    so that an epoch over it takes as many steps as one over a set of ``size`` samples."""
    if len(dataset) == size:
        return dataset
    g = torch.Generator().manual_seed(seed)
    copies = math.ceil(size / len(dataset))
    idx = torch.cat([torch.randperm(len(dataset), generator=g) for _ in range(copies)])[:size]
    return dataset.subset(idx, dataset.name)


def teacher_logits(student, teacher, train, device, batch_size: int) -> torch.Tensor:
    """The teacher's logits on every training sample, computed once: every student of the cell is
    then given them (``DistillationTask(precomputed_outputs=...)``) instead of running the teacher."""
    task = DistillationTask(student, teacher, api.make_terms([{"name": "kd"}]))
    out = task.compute_teacher_outputs(train, batch_size=batch_size, device=device)[0][OUTPUT]
    task.teardown()
    return out


def budget(cfg, args, **update):
    """``cfg`` (a TrainConfig) with the benchmark's early stopping and maximum, and ``update``, validated."""
    return type(cfg).model_validate({**cfg.model_dump(), "epochs": args.max_epochs,
                                     "early_stopping": {"patience": args.patience, "min_delta": 0.0}, **update})


def fit_result(fit, steps_per_epoch: int) -> dict:
    """The fields a row records about one training run."""
    return {"val_accuracy": 100 * fit.best_val_accuracy, "best_epoch": fit.best_epoch, "epochs_run": fit.epochs,
            "max_epochs": fit.max_epochs, "steps": fit.steps, "steps_per_epoch": steps_per_epoch,
            "max_steps": fit.max_epochs * steps_per_epoch, "stopped_early": fit.stopped_early,
            "converged": fit.converged, "seconds": round(fit.seconds, 1)}


def fit_supervised(scfg, data, train: MultimodalDataset, args, device, seed, *, lr=None, augment=None):
    """(model, fit): cross-entropy on ``train`` (labelled samples), resized to an epoch of the
    whole training split's size."""
    model = build_model(scfg.model, data.specs, data.num_classes, seed=seed)
    update = {"augment": augment} if augment else {}
    if lr is not None:
        update["optimizer"] = {**scfg.train.optimizer.model_dump(), "lr": lr}
    cfg = budget(scfg.train, args, **update)
    train = resized(train.labelled_only(), len(data.train), seed)
    fit = api.train(model, DataSplits(train, data.test, data.val, data.info), cfg, device=str(device), seed=seed,
                    label="student")
    return model, fit, math.ceil(len(train) / cfg.batch_size)


def fit_kd(scfg, data, train, teacher, logits, temperature, separate, args, device, seed):
    """(model, fit): CE + KD at ``temperature`` over every training sample from the shared logits;
    ``separate``: a labelled batch and a transfer batch per step (train.labelled_batch_size)."""
    model = build_model(scfg.model, data.specs, data.num_classes, seed=seed)
    cfg = budget(scfg.train, args, **({"labelled_batch_size": scfg.train.batch_size} if separate else {}))
    terms = [{"name": "kd", "weight": 1.0, "temperature": temperature}]
    task = DistillationTask(model, teacher, api.make_terms(terms), gamma=1.0, precomputed_outputs=[{OUTPUT: logits}])
    fit = Trainer(cfg, device=device, seed=seed, label="student").fit(task, train, data.val)
    return model, fit, math.ceil(len(train) / cfg.batch_size)


def fit_consistent(scfg, data, teacher, args, device, seed):
    """(model, fit, terms): the packaged student recipe's teaching (its augmentation, the teacher on
    the student's augmented view from the view cache, its distillation terms and gamma) on every
    training sample, one mixed batch per step, under the benchmark's budget."""
    packaged = recipe("av_digits_student")
    model = build_model(scfg.model, data.specs, data.num_classes, seed=seed)
    cfg = budget(scfg.train, args, **{k: packaged["train"][k] for k in TEACHING})
    terms = packaged["distill"]["terms"]
    task = DistillationTask(model, teacher, api.make_terms(terms), gamma=packaged["distill"]["gamma"])
    fit = Trainer(cfg, device=device, seed=seed, label="student").fit(task, data.train, data.val)
    return model, fit, math.ceil(len(data.train) / cfg.batch_size), terms


def pseudo_labelled(train: MultimodalDataset, logits: torch.Tensor, tau: float) -> tuple[MultimodalDataset, dict]:
    """The labelled samples, plus the unlabelled ones the teacher predicts with confidence >= tau, with its class
    (the other samples stay unlabelled)."""
    prob = torch.softmax(logits.float(), 1)
    conf, pred = prob.max(1)
    unlabelled = ~train.labelled
    take = unlabelled & (conf >= tau)
    labels = torch.where(take, pred, train.labels)
    return train.with_labels(labels), {"pseudo_labelled": int(take.sum()), "unlabelled": int(unlabelled.sum())}


def flat_features(dataset: MultimodalDataset) -> np.ndarray:
    return torch.cat([dataset.modalities[m].flatten(1).float() for m in sorted(dataset.modalities)], 1).numpy()


def fit_linear(data, cs, seed) -> dict:
    """Logistic regression on the labelled training samples' flattened, standardised inputs; C on validation."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import StandardScaler

    train = data.train.labelled_only()
    scaler = StandardScaler().fit(flat_features(train))
    x, y = scaler.transform(flat_features(train)), train.labels.numpy()
    xv, yv = scaler.transform(flat_features(data.val)), data.val.labels.numpy()
    start = time.perf_counter()
    best = None
    for c in cs:
        clf = LogisticRegression(C=c, max_iter=2000, random_state=seed).fit(x, y)
        val = float((clf.predict(xv) == yv).mean())
        if best is None or val > best[1]:
            best = (clf, val, c)
    clf, val, c = best
    test = float((clf.predict(scaler.transform(flat_features(data.test))) == data.test.labels.numpy()).mean())
    return {"accuracy": 100 * test, "val_accuracy": 100 * val, "C": c, "Cs": list(cs),
            "seconds": round(time.perf_counter() - start, 1), "loss": "logistic regression (labelled)"}


def cell_teacher(t_raw, data, args, seed, device, base, done, save):
    """(teacher, its run summary): trained on the labelled part, or reused from the teacher cache;
    with several ``--teacher-augment`` candidates, each is trained and the best on validation kept."""
    train = data.train.labelled_only()
    tcfg = parse_config(t_raw, "teacher")
    size = max(1, round(args.teacher_epoch_steps * tcfg.train.batch_size / len(train))) * len(train)
    teacher_epoch = resized(train, size, seed)
    teacher_data = DataSplits(teacher_epoch, data.test, data.val, {**data.info, "teacher_epoch_samples": size})
    best, tried = None, []
    for name in args.teacher_augment:
        aug = SCRATCH_AUGMENT[name]
        tcfg = parse_config(apply_overrides(t_raw, [f"train.epochs={args.teacher_max_epochs}",
                                                    f"train.early_stopping={{patience: {args.teacher_patience}}}",
                                                    *([f"train.augment={json.dumps(scratch_augment(aug))}"] if aug else [])]),
                            "teacher")
        with tempfile.TemporaryDirectory() as tmp:
            summary = train_or_reuse_teacher(tcfg, teacher_data, Path(tmp) / "teacher", print, reuse=True)
            teacher = load_checkpoint(Path(tmp) / "teacher" / "best.pt", device)[0]
        tried.append({"augment": aug, "val_accuracy": 100 * summary["val_accuracy"], "best_epoch": summary["best_epoch"],
                      "steps": summary["steps"], "converged": summary["converged"]})
        if best is None or summary["val_accuracy"] > best[1]["val_accuracy"]:
            best = (teacher, summary, aug)
    teacher, summary, aug = best
    if "teacher" not in done and "teacher" in args.models:  # a part run for other rows reuses it silently
        per_epoch = math.ceil(size / tcfg.train.batch_size)
        save({**base, "model": "teacher", "accuracy": 100 * summary["model"]["accuracy"],
              "val_accuracy": 100 * summary["val_accuracy"], "best_epoch": summary["best_epoch"],
              "epochs_run": summary["epochs_run"], "max_epochs": summary["max_epochs"], "steps": summary["steps"],
              "steps_per_epoch": per_epoch, "max_steps": summary["max_epochs"] * per_epoch,
              "stopped_early": summary["stopped_early"], "converged": summary["converged"],
              "reused": summary.get("reused_from") is not None,
              **({"augment": aug, "candidates": tried} if args.teacher_augment != ["off"] else {})})
    return teacher, summary


def run_cell(fraction, seed, args, built, rows, save) -> None:
    wanted = [m for m in models_at(fraction) if m in args.models]
    done = {r["model"] for r in rows if r["label_fraction"] == fraction and r["seed"] == seed}
    if all(m in done for m in wanted):
        return
    device = api.resolve_device(args.device)
    common = [f"seed={seed}", f"device={args.device}", "train.progress=false", *args.overrides]
    if fraction < 1:
        common.append(f"data.label_fraction={fraction}")
    t_raw = apply_overrides(recipe("av_digits_teacher"), list(common))
    s_raw = apply_overrides(plain_student_recipe(), list(common))
    s_raw.pop("distill")
    if args.data:
        t_raw["data"] = {**args.data, **({"label_fraction": fraction} if fraction < 1 else {})}
        s_raw["data"] = dict(t_raw["data"])
    tcfg, scfg = parse_config(t_raw, "teacher"), parse_config(s_raw, "student")
    data = build_data(tcfg.data, seed=seed, val_fraction=tcfg.train.val_fraction, built=built)
    labelled = data.train.num_labelled
    base = {"label_fraction": fraction, "seed": seed, "labelled": labelled, "unlabelled": len(data.train) - labelled,
            "machine": machine()}
    start = time.perf_counter()

    # the teacher, on the labelled part only, trained until validation stops improving (not needed
    # by the linear model and the scratch student, which a part may run alone)
    if not any(m not in ("linear", "scratch") for m in wanted):
        teacher = None
    else:
        teacher, summary = cell_teacher(t_raw, data, args, seed, device, base, done, save)
    if "linear" in wanted and "linear" not in done:
        save({**base, "model": "linear", **fit_linear(data, args.linear_c, seed)})
    if teacher is not None:
        stub = build_model(scfg.model, data.specs, data.num_classes, seed=seed).to(device)
        logits = teacher_logits(stub, teacher, data.train, device, tcfg.train.eval_batch_size).cpu()
        teacher_test, _ = predict(teacher, data.test, device=device, batch_size=tcfg.train.eval_batch_size)

    def record(name, model, fit, steps_per_epoch, **extra):
        out, labels = predict(model, data.test, device=device)
        save({**base, "model": name, "accuracy": 100 * accuracy(out, labels),
              "teacher_agreement": agreement(out, teacher_test) if teacher is not None else None,
              # the teacher this row learnt from (a part run on another machine may retrain it)
              **({"teacher_accuracy": 100 * summary["model"]["accuracy"]} if teacher is not None else {}),
              **fit_result(fit, steps_per_epoch), "loss": LOSSES[name], **extra})

    def candidate(fit, **choice) -> dict:
        return {**choice, "val_accuracy": 100 * fit.best_val_accuracy, "best_epoch": fit.best_epoch,
                "steps": fit.steps, "converged": fit.converged}

    chosen = choices(args, fraction, seed, rows)
    if "scratch" in wanted and "scratch" not in done:
        best, tried = None, []
        grid = [(lr, SCRATCH_AUGMENT[aug]) for lr in args.scratch_lrs for aug in args.scratch_augment]
        for lr, aug in ([chosen["scratch"]] if "scratch" in chosen else grid):
            model, fit, spe = fit_supervised(scfg, data, data.train, args, device, seed, lr=lr,
                                             augment=scratch_augment(aug))
            tried.append(candidate(fit, lr=lr, augment=aug))
            if best is None or fit.best_val_accuracy > best[1].best_val_accuracy:
                best = (model, fit, spe, lr, aug)
        model, fit, spe, lr, aug = best
        record("scratch", model, fit, spe, lr=lr, augment=aug, candidates=tried,
               chosen_on_seed=chosen["seed"] if "scratch" in chosen else seed)
    # kd_pseudo's threshold: pseudo_label's on this seed, from this run or the --choices file
    pool = rows + (json.loads(Path(args.choices).read_text())["rows"]
                   if args.choices and Path(args.choices).is_file() else [])
    tau = next((r["threshold"] for r in pool if r["label_fraction"] == fraction and r["seed"] == seed
                and r["model"] == "pseudo_label"), None)
    if fraction < 1 and (("pseudo_label" in wanted and "pseudo_label" not in done)
                         or ("kd_pseudo" in wanted and "kd_pseudo" not in done and tau is None)):
        best, tried = None, []
        for t in ([chosen["pseudo_label"]] if "pseudo_label" in chosen else args.thresholds):
            train_p, info = pseudo_labelled(data.train, logits, t)
            model, fit, spe = fit_supervised(scfg, data, train_p, args, device, seed)
            tried.append(candidate(fit, threshold=t, **info))
            if best is None or fit.best_val_accuracy > best[1].best_val_accuracy:
                best = (model, fit, spe, t, info)
        model, fit, spe, tau, info = best
        record("pseudo_label", model, fit, spe, threshold=tau, **info, candidates=tried,
               chosen_on_seed=chosen["seed"] if "pseudo_label" in chosen else seed)
    for name in KD_ROWS:
        if name not in wanted or name in done:
            continue
        if name == "kd_consistent":
            model, fit, spe, terms = fit_consistent(scfg, data, teacher, args, device, seed)
            record(name, model, fit, spe, terms=terms, view_cache_seconds=fit.view_cache_seconds)
            continue
        temperature, separate, pseudo = KD_SPECS[name]
        train, extra = data.train, {"temperature": temperature}
        if pseudo:
            train, info = pseudo_labelled(data.train, logits, tau)
            extra.update(threshold=tau, **info)
        model, fit, spe = fit_kd(scfg, data, train, teacher, logits, temperature, separate, args, device, seed)
        record(name, model, fit, spe, **extra)
    print(f"fraction {fraction} seed {seed}: {', '.join(wanted)} done in {time.perf_counter() - start:.0f} s",
          flush=True)


def choices(args, fraction, seed, rows) -> dict:
    """The scratch student's (learning rate, augmentation) and pseudo-labelling's threshold chosen
    on validation on seed ``--choice-seed`` (in this run's rows or the ``--choices`` file), for
    another seed to reuse; empty for that seed itself or without them."""
    if args.choices is None or seed == args.choice_seed:
        return {}
    pool = list(rows)
    path = Path(args.choices)
    if path.is_file():
        pool += json.loads(path.read_text())["rows"]
    out = {"seed": args.choice_seed}
    for r in pool:
        if r["label_fraction"] == fraction and r["seed"] == args.choice_seed:
            if r["model"] == "scratch":
                out["scratch"] = (r["lr"], r["augment"])
            elif r["model"] == "pseudo_label":
                out["pseudo_label"] = r["threshold"]
    return out


# --- the report -----------------------------------------------------------------------------------
def by(rows, fraction, model, key="accuracy") -> dict[int, float]:
    return {r["seed"]: r[key] for r in rows if r["label_fraction"] == fraction and r["model"] == model}


def summarise(rows: list[dict]) -> dict:
    """Per fraction and model: mean test and validation accuracy, best epochs, steps, convergence; per
    student, the teacher-scratch gap it closes and its paired differences with scratch and
    pseudo-labelling (paired by seed, over the seeds both have); the KD row with the best mean
    validation accuracy (``best_kd``: chosen on validation, never on test)."""
    out = {}
    for f in sorted({r["label_fraction"] for r in rows}):
        entry = {"models": {}, "best_kd": None}
        t, s, p = by(rows, f, "teacher"), by(rows, f, "scratch"), by(rows, f, "pseudo_label")
        for m in MODELS:
            acc = by(rows, f, m)
            if not acc:
                continue
            # by seed, as "seeds" lists them: the per-seed columns (best epoch, steps) follow that order
            mine = sorted((r for r in rows if r["label_fraction"] == f and r["model"] == m), key=lambda r: r["seed"])
            mean, std = mean_std(list(acc.values()))
            e = {"mean": mean, "std": std, "seeds": sorted(acc), "per_seed": acc,
                 "val_mean": mean_std([r["val_accuracy"] for r in mine])[0]}
            if "best_epoch" in mine[0]:
                e.update(best_epochs=[r["best_epoch"] for r in mine], steps=[r["steps"] for r in mine],
                         max_steps=[r["max_steps"] for r in mine],
                         not_converged=[r["seed"] for r in mine if not r["converged"]])
            if m not in ("teacher", "scratch", "linear"):
                seeds = sorted(set(t) & set(s) & set(acc))
                closed = [(acc[k] - s[k]) / (t[k] - s[k]) for k in seeds if t[k] > s[k]]
                if closed:
                    e["gap_closed"] = {"per_seed": closed, "mean": float(np.mean(closed))}
            for other, key, skip in ((s, "vs_scratch", "scratch"), (p, "vs_pseudo_label", "pseudo_label")):
                paired = sorted(set(acc) & set(other))
                if paired and m != skip:
                    d = [acc[k] - other[k] for k in paired]
                    e[key] = {"mean": float(np.mean(d)), "per_seed": d, "ahead": sum(x > 0 for x in d),
                              "seeds": len(d)}
            entry["models"][m] = e
        kd = [m for m in KD_ROWS if m in entry["models"]]
        if kd:
            entry["best_kd"] = max(kd, key=lambda m: entry["models"][m]["val_mean"])
        out[str(f)] = entry
    return out


def markdown(rows: list[dict], summary: dict, settings: dict) -> str:
    lines = [f"AV-Digits hard, test accuracy (%), mean ± std over the seeds listed; every model trained until "
             f"validation accuracy stopped improving for {settings['patience']} epochs (at most "
             f"{settings['max_epochs']} epochs; a student epoch is one pass over the whole training split's size, "
             "batch 128). best epoch: per seed; steps: optimisation steps taken (counted), per seed. "
             "Gap closed = (model - scratch) / (teacher - scratch), per seed, averaged. "
             "⚠: a seed's best epoch is in the last tenth of its schedule (not converged)."]
    head = ["model", "test %", "seeds", "gap closed", "vs scratch", "vs pseudo_label", "best epoch", "steps", "val %"]
    for f, e in summary.items():
        table = []
        for m, a in e["models"].items():
            flag = " ⚠" if a.get("not_converged") else ""
            gap = f"{100 * a['gap_closed']['mean']:.0f}%" if "gap_closed" in a else ""
            vs = lambda k: (f"{a[k]['mean']:+.2f} ({a[k]['ahead']}/{a[k]['seeds']})" if k in a else "")  # noqa: E731
            table.append([m + (" (best KD on val)" if m == e["best_kd"] else ""),
                          f"{a['mean']:.2f} ± {a['std']:.2f}", ",".join(map(str, a["seeds"])), gap,
                          vs("vs_scratch"), vs("vs_pseudo_label"),
                          ", ".join(map(str, a.get("best_epochs", []))) + flag,
                          ", ".join(map(str, a.get("steps", []))), f"{a['val_mean']:.2f}"])
        lines += ["", f"### {100 * float(f):g}% of the labels", "", markdown_table(head, table)]
    return "\n".join(lines)


def plot(summary: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    fractions = [float(f) for f in summary]
    for m in MODELS:
        pts = [(float(f), e["models"][m]) for f, e in summary.items() if m in e["models"]]
        if pts:
            ax.errorbar([100 * f for f, _ in pts], [a["mean"] for _, a in pts], yerr=[a["std"] for _, a in pts],
                        marker="o", capsize=3, label=m)
    ax.set_xscale("log")
    ax.set_xticks([100 * f for f in fractions])
    ax.set_xticklabels([f"{100 * f:g}%" for f in fractions])
    ax.set_xlabel("training labels kept")
    ax.set_ylabel("test accuracy (%)")
    ax.set_title("AV-Digits hard: label efficiency (converged budgets)")
    ax.legend(fontsize=7)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--fractions", type=float, nargs="+", default=list(FRACTIONS))
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--models", nargs="+", default=list(MODELS), choices=MODELS,
                        help="the rows to run (the others of a cell are left for another run)")
    parser.add_argument("--max-epochs", type=int, default=30)
    parser.add_argument("--patience", type=int, default=5)
    parser.add_argument("--teacher-epoch-steps", type=int, default=24)
    parser.add_argument("--teacher-max-epochs", type=int, default=20)
    parser.add_argument("--teacher-patience", type=int, default=5)
    parser.add_argument("--teacher-augment", nargs="+", default=["off"], choices=list(SCRATCH_AUGMENT),
                        help="the teacher's augmentation candidates (as --scratch-augment's), chosen on validation "
                             "per seed; default: off, the teacher recipe as it is")
    parser.add_argument("--choices", default=None,
                        help="a results JSON (same settings) whose seed --choice-seed scratch (learning rate, "
                             "augmentation) and pseudo-labelling threshold, chosen there on validation, the "
                             "other seeds reuse instead of searching again (cheaper)")
    parser.add_argument("--choice-seed", type=int, default=0)
    parser.add_argument("--scratch-lrs", type=float, nargs="+", default=[0.003, 0.001])
    parser.add_argument("--scratch-augment", nargs="+", default=["off", "on"], choices=list(SCRATCH_AUGMENT),
                        help="on: image translations and audio time shifts; recipe: the packaged student recipe's")
    parser.add_argument("--thresholds", type=float, nargs="+", default=[0.5, 0.9])
    parser.add_argument("--linear-c", type=float, nargs="+", default=[0.01, 0.1, 1.0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--data", type=json.loads, default=None,
                        help="a data section as JSON instead of the recipes' AV-Digits (e.g. for a smoke test)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], help="recipe override key=value")
    parser.add_argument("--name", default=str(RESULTS / "label_efficiency_converged"),
                        help="output path without suffix")
    parser.add_argument("--merge", nargs="+", default=None,
                        help="result files of parts run in parallel (same settings) to merge into --name")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    out = Path(args.name.removesuffix(".json"))
    out.parent.mkdir(parents=True, exist_ok=True)
    keys = ("max_epochs", "patience", "teacher_epoch_steps", "teacher_max_epochs", "teacher_patience",
            "linear_c", "overrides", "data")
    settings = {k: getattr(args, k) for k in keys}
    if args.teacher_augment != ["off"]:  # a setting (every KD row of a cell learns from the teacher chosen),
        settings["teacher_augment"] = args.teacher_augment  # recorded only where used: earlier files stay valid
    # the searches' grids (scratch learning rates and augmentation, pseudo-labelling thresholds) are
    # not settings: each row records the candidates it chose among, and parts that searched different
    # candidates of one row merge into one row (the best on validation, every candidate listed)
    json_path = result_file(out, ".json")
    rows: list[dict] = []
    if json_path.is_file():
        old = json.loads(json_path.read_text())
        if old.get("settings") == settings:
            rows = old["rows"]
            print(f"resuming: {len(rows)} rows from {json_path}")

    def write(figure: bool = False) -> None:
        summary = summarise(rows)
        json_path.write_text(json.dumps({"settings": settings, "rows": rows, "summary": summary}, indent=2) + "\n")
        result_file(out, ".md").write_text(markdown(rows, summary, settings) + "\n")
        if figure:
            plot(summary, result_file(out, ".png"))

    def save(row: dict) -> None:
        key = (row["label_fraction"], row["seed"], row["model"])
        rows[:] = [r for r in rows if (r["label_fraction"], r["seed"], r["model"]) != key] + [row]
        write()

    def searched(old: dict, new: dict) -> dict:
        """Two parts' runs of one row: a row that searched candidates (learning rate, augmentation,
        threshold) keeps the best on validation and lists every candidate both tried; otherwise
        the later part's row replaces the earlier."""
        if "candidates" not in old or "candidates" not in new:
            return new
        tried = old["candidates"] + [c for c in new["candidates"] if c not in old["candidates"]]
        return dict(max((old, new), key=lambda r: r["val_accuracy"]), candidates=tried)

    if args.merge:
        parts = [(json_path, list(rows))]
        for part in args.merge:
            old = json.loads(Path(part).read_text())
            if old["settings"] != settings:
                raise SystemExit(f"{part}: run with other settings than these ({old['settings']})")
            parts.append((part, old["rows"]))
        rows[:] = merge_rows(parts, key=lambda r: (r["label_fraction"], r["seed"], r["model"]), resolve=searched)
        write(figure=True)
        print(result_file(out, ".md").read_text())
        return
    # the dataset builder does not use the run seed (AV-Digits pairs with its own pairing_seed): built once
    data_raw = args.data or apply_overrides(recipe("av_digits_teacher"), list(args.overrides))["data"]
    dcfg = DataConfig.model_validate(data_raw)
    built = DATASETS.get(dcfg.name)(data_root(dcfg.root), parse_options(dcfg.name, dcfg.options), 0)
    if dcfg.name != "av_digits":
        built = None  # e.g. synthetic draws with the seed: build per seed
    # the first fraction on every seed, then seed by seed: a run cut short still has whole rows
    first, rest = args.fractions[0], args.fractions[1:]
    cells = [(first, seed) for seed in args.seeds] + [(f, seed) for f in rest for seed in args.seeds]
    for fraction, seed in cells:
        run_cell(fraction, seed, args, built, rows, save)
        write(figure=True)
    print((result_file(out, ".md")).read_text())


if __name__ == "__main__":
    main()
