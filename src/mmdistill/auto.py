"""``mmdistill distill CONFIG --auto``: choose whether and how to distil, on the validation split.

The candidates (:func:`candidate_set`), each trained from the same initial weights, on the same
batches (paired seeds: the config's ``seed``), with the config's training settings:

* ``none``: plain cross-entropy, no teacher;
* ``kd_t1``, ``kd_t2``, ``kd_t4``: Hinton et al.'s KD (2015) at temperature 1, 2 and 4, weight 1
  (the temperatures the AV-Digits recipe search compares, benchmarks/demo_recipe.py; which one
  wins is data-dependent, so the search picks on validation);
* ``dist``: DIST (Huang et al. 2022), weight 1;
* one feature method, by the kind of feature point student and teacher share
  (:func:`~mmdistill.models.points.placements`): ``at`` on each modality's last activation map
  (weight 10) when they share maps; else ``fitnet`` on each shared modality's embedding
  (weight 1); else ``rkd`` on the fused embedding (weight 0.001). Per kind, the method and
  weight are those the AV-Digits method table (docs/methods.md) selected on validation accuracy
  (AT was the best map method, FitNet the best embedding method).

With ``train.augment`` in the config every candidate trains on augmented inputs, and the teachers
see the student's augmented input (``train.augment_teacher``, default ``same``): consistent
teaching (Beyer et al., CVPR 2022) is what the KD candidates do then. With ``train.view_cache``
(the packaged AV-Digits student recipe) they read the teachers from the cache of augmented views,
and ``none`` trains without it, on augmentation drawn afresh, as the demo's scratch twin does.

Distillation candidates keep the config's ``distill.gamma`` (the weight of cross-entropy) and
``distill.ensemble`` (with several teachers, logit terms read their fusion; the feature method
reads the first teacher). Each distillation candidate's weights may be multiplied by a grid of
``scales``. The choice is the
candidate with the best validation accuracy at its best epoch; when the best distillation
candidate beats ``none`` by less than the margin (0.5 accuracy points by default, and at least 2
validation samples' worth: 1.8 points on 110 validation samples) the choice is ``none``: without
clear evidence, not distilling is the safer answer. The test split is never
used to choose (candidates' test accuracies are reported beside, for the record).

Budget: every candidate trains for ``search_epochs`` (default: the config's ``train.epochs``).
With the full budget the chosen candidate's model is kept as the final model; with a shorter
search budget the chosen setting is retrained for ``train.epochs`` (same seed) and that model is
the final one. ``summary.json["auto"]`` records which (``final``).

The search also scores the teachers on validation (``teacher_val_accuracy``, the best of them) and
says so when none beats ``none``, the student trained without them (``teacher_no_better``): such a
teacher has nothing to teach (docs/label_efficiency.md: across label fractions and seeds, KD was
ahead of scratch on no seed whose teacher was not); a better teacher is what would help.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

from torch import nn

from . import api
from .checkpoint import load_checkpoint
from .config import RunConfig
from .data.dataset import DataSplits
from .errors import ConfigError
from .evaluate import accuracy, evaluate_model, predict
from .models import build_model
from .rundir import BEST, HISTORY, LAST, RunDir, copy_file
from .runs import finish, load_teachers, loss_terms, placed_terms, prepare, run_distill, saver, with_terms

#: a distillation candidate must beat ``none`` by this much validation accuracy (0.5 points) ...
MARGIN = 0.005
#: ... and by at least this many validation samples
MIN_SAMPLES = 2


@dataclass
class Candidate:
    """One setting the search trains: its name and loss terms (empty: plain cross-entropy)."""

    name: str
    terms: list[dict] = field(default_factory=list)
    scale: float | None = None


def feature_method(student: nn.Module, teacher: nn.Module) -> tuple[str, float] | None:
    """(loss, weight) of the feature candidate for these models, by the kind of point they share
    (see the module docstring); None when the models declare no points to place one."""
    from .models.points import feature_points

    def shared(kind: str) -> bool:
        s = {p.modality for p in feature_points(student) if p.kind == kind}
        t = {p.modality for p in feature_points(teacher) if p.kind == kind}
        return bool(s & t)

    if not feature_points(student) or not feature_points(teacher):
        return None
    if shared("map"):
        return "at", 10.0
    if shared("embedding"):
        return "fitnet", 1.0
    if shared("fused"):
        return "rkd", 0.001
    return None


def candidate_set(student: nn.Module, teacher: nn.Module, scales: Sequence[float] = (1.0,),
                  source: str | None = None) -> list[Candidate]:
    """``none`` first, then KD at T=1, 2 and 4, DIST and the feature method, at each scale."""
    out = [Candidate("none")]
    feature = feature_method(student, teacher)
    src = {"source": source} if source else {}
    for scale in scales:
        tag = "" if len(scales) == 1 else f"_x{scale:g}"
        out += [Candidate(f"kd_t{t:g}{tag}", [{"name": "kd", "weight": 1.0 * scale, "temperature": t}], scale)
                for t in (1.0, 2.0, 4.0)]
        out.append(Candidate(f"dist{tag}", [{"name": "dist", "weight": 1.0 * scale}], scale))
        if feature is not None:
            name, weight = feature
            out.append(Candidate(f"{name}{tag}", [{"name": name, "weight": weight * scale, **src}], scale))
    return out


def margin_for(margin: float, val_samples: int) -> float:
    """The margin a distillation candidate must clear: ``margin``, and at least
    :data:`MIN_SAMPLES` validation samples' worth (on 100 validation samples one sample is a whole
    point, so a 0.5-point margin would let a single lucky sample decide)."""
    return max(margin, MIN_SAMPLES / max(1, val_samples))


def choose(records: list[dict], margin: float = MARGIN) -> str:
    """The candidate with the best validation accuracy (earlier wins ties); ``none`` unless a
    distillation candidate beats it by at least ``margin``."""
    best = max(records, key=lambda r: r["val_accuracy"])  # max keeps the first of equals
    none = next((r for r in records if r["name"] == "none"), None)
    if none is not None and best["val_accuracy"] - none["val_accuracy"] < margin - 1e-6:  # float32 accuracies
        return "none"
    return best["name"]


def train_candidate(cfg: RunConfig, data: DataSplits, teachers: dict[str, nn.Module], cand: Candidate, *,
                    epochs: int, device, run_dir: Path | None = None, save: Callable | None = None):
    """(student, fit) of one candidate, trained from the config's seed for ``epochs`` epochs. ``none``
    trains as the demo's scratch twin does (``mmdistill.demo.SCRATCH_TWIN``): without the config's
    ``view_cache``, which holds teacher outputs, so its augmentation is drawn afresh every epoch
    instead of from the cached views."""
    train_cfg = cfg.train.model_copy(update={"epochs": epochs})
    student = build_model(cfg.model, data.specs, data.num_classes, seed=cfg.seed)
    if not cand.terms:
        train_cfg = train_cfg.model_copy(update={"view_cache": None})
        fit = api.train(student, data, train_cfg, device=str(device), seed=cfg.seed, run_dir=run_dir, save=save,
                        label=f"auto: {cand.name}")
    else:
        fit = api.distill(student, teachers, data, terms=cand.terms, gamma=cfg.distill.gamma,
                          ensemble=cfg.distill.ensemble, cfg=train_cfg, device=str(device), seed=cfg.seed,
                          run_dir=run_dir, save=save, label=f"auto: {cand.name}")
    return student, fit


def search(cfg: RunConfig, data: DataSplits, teachers: dict[str, nn.Module], *, device, epochs: int | None = None,
           scales: Sequence[float] = (1.0,), margin: float = MARGIN, run_dir: Path | None = None,
           save: Callable | None = None, log: Callable[[str], None] | None = None) -> dict:
    """Train every candidate and choose; returns ``{"choice", "candidates": [records], "model"}``
    (``model``: the chosen candidate's student). With ``run_dir``, each candidate writes its metrics
    (and, with ``save``, its checkpoints) to ``run_dir/candidates/<name>``. Each record: name, terms (config entries), scale,
    val_accuracy, best_epoch, placed (the terms' module paths), test_accuracy (reported, never used to choose), seconds."""
    if data.val is None:
        raise ConfigError("train.val_fraction: --auto chooses on the validation split; set it above 0")
    if cfg.distill is None:
        raise ConfigError("distill: section missing (--auto needs the teacher checkpoint)")
    epochs = epochs or cfg.train.epochs
    first = next(iter(teachers.values()))
    probe = build_model(cfg.model, data.specs, data.num_classes, seed=cfg.seed)
    source = next(iter(teachers)) if len(teachers) > 1 else None
    records, models = [], {}
    for cand in candidate_set(probe, first, scales, source=source):
        sub = None
        if run_dir is not None:
            sub = Path(run_dir) / "candidates" / cand.name
            sub.mkdir(parents=True, exist_ok=True)
        student, fit = train_candidate(cfg, data, teachers, cand, epochs=epochs, device=device, run_dir=sub,
                                       save=save if sub is not None else None)
        logits, labels = predict(student, data.test, device=device, batch_size=cfg.train.eval_batch_size)
        placed = [] if fit.task is None else placed_terms(fit.task)
        record = {"name": cand.name, "terms": cand.terms, "placed": placed, "scale": cand.scale, "val_accuracy": fit.best_val_accuracy,
                  "best_epoch": fit.best_epoch, "test_accuracy": accuracy(logits, labels),
                  "seconds": round(fit.seconds, 2)}
        records.append(record)
        models[cand.name] = student
        if log:
            log(f"auto: {cand.name:10s} val {record['val_accuracy']:.4f} (epoch {fit.best_epoch})")
    used = margin_for(margin, len(data.val))
    choice = choose(records, used)
    teacher_val = max(evaluate_model(t, data.val, device=device, batch_size=cfg.train.eval_batch_size)["accuracy"]
                      for t in teachers.values())
    alone = next(r["val_accuracy"] for r in records if r["name"] == "none")
    if teacher_val <= alone and log:
        log(f"auto: the teacher is no better on validation ({teacher_val:.4f}) than the student trained without "
            f"it ({alone:.4f}): it has nothing to teach this student; a better teacher would help, not another loss")
    return {"choice": choice, "margin": used, "candidates": records, "model": models[choice],
            "teacher_val_accuracy": teacher_val, "teacher_no_better": teacher_val <= alone,
            "terms": next(c.terms for c in candidate_set(probe, first, scales, source=source) if c.name == choice)}


def run_auto(cfg: RunConfig, out: str | Path, *, overwrite: bool = False, config_path: str | Path | None = None,
             data: DataSplits | None = None, search_epochs: int | None = None, scales: Sequence[float] = (1.0,),
             margin: float = MARGIN, log: Callable[[str], None] | None = None, trust_code: bool = False) -> dict:
    """``distill --auto``: search, then keep or retrain the chosen setting (see the module docstring).

    The run directory holds ``candidates/<name>/`` (each candidate's metrics.jsonl and
    checkpoints), the final model's ``best.pt``/``last.pt``, ``metrics.json`` and ``summary.json``
    with ``auto: {choice, margin, search_epochs, final, candidates}``."""
    if cfg.distill is None:
        raise ConfigError("distill: section missing (it names the teacher checkpoint)")
    if search_epochs is not None and not 0 < search_epochs <= cfg.train.epochs:
        raise ConfigError(f"--auto-epochs: {search_epochs} must be between 1 and train.epochs ({cfg.train.epochs})")
    if cfg.train.val_fraction <= 0:
        raise ConfigError("train.val_fraction: --auto chooses on the validation split; set it above 0")
    if not scales or any(not k > 0 for k in scales):
        raise ConfigError(f"--auto-scale: weight scales must be positive (got {list(scales)})")
    device, data = prepare(cfg, out, overwrite=overwrite, data=data, config_path=config_path)
    teachers = load_teachers(cfg, data, device, config_path, trust_code=trust_code)
    epochs = search_epochs or cfg.train.epochs
    with RunDir(out, kind="auto", role="student", overwrite=overwrite, config=cfg.model_dump()) as run:
        save = saver(cfg, data, "student")
        found = search(cfg, data, teachers, device=device, epochs=epochs, scales=scales, margin=margin,
                       run_dir=run.path, save=save, log=log)
        choice = found["choice"]
        if epochs == cfg.train.epochs:
            final = "kept from the search (it used the full budget)"
            chosen = run.path / "candidates" / choice
            student, _ = load_checkpoint(chosen / BEST, device, config=cfg)  # the config's own student
            for name in (BEST, LAST, HISTORY):  # atomic: a full disk leaves no half file
                copy_file(chosen / name, run.path / name)
            record = next(r for r in found["candidates"] if r["name"] == choice)
            best_epoch, val_accuracy = record["best_epoch"], record["val_accuracy"]
        else:
            final = f"retrained for train.epochs={cfg.train.epochs} (the search used {epochs})"
            cand = Candidate(choice, found["terms"])
            student, fit = train_candidate(cfg, data, teachers, cand, epochs=cfg.train.epochs, device=device,
                                           run_dir=run.path, save=save)
            best_epoch, val_accuracy = fit.best_epoch, fit.best_val_accuracy
        first = next(iter(teachers.values()))
        metrics = evaluate_model(student, data.test, device=device, teacher=first, batch_size=cfg.train.eval_batch_size)
        summary = {"dataset": data.info, "student": {**metrics}, "best_epoch": best_epoch,
                   "val_accuracy": val_accuracy, "checkpoint": str(run / BEST),
                   "teacher": evaluate_model(first, data.test, device=device, batch_size=cfg.train.eval_batch_size),
                   "auto": {"choice": choice, "terms": found["terms"], "margin": found["margin"],
                            "search_epochs": epochs, "final": final, "candidates": found["candidates"],
                            "teacher_val_accuracy": found["teacher_val_accuracy"],
                            "teacher_no_better": found["teacher_no_better"]}}
        return finish(run, summary, metrics)



def run_distill_command(cfg: RunConfig, out: str | Path, *, loss: Sequence[str] = (), auto: bool = False,
                        auto_epochs: int | None = None, auto_scales: Sequence[float] = (), resume: bool = False,
                        overwrite: bool = False, config_path: str | Path | None = None, trust_code: bool = False,
                        log: Callable[[str], None] | None = None) -> dict:
    """``mmdistill distill``: :func:`run_auto` with ``auto``, else :func:`~mmdistill.runs.run_distill`
    with the config's loss terms replaced by ``loss`` (``NAME[:WEIGHT]`` each) when given.
    Flags that do not go together are refused first, in one line naming them."""
    import math

    bad = [k for k in auto_scales if not (math.isfinite(k) and k > 0)]
    if bad:
        raise ConfigError(f"--auto-scale {bad[0]}: a weight scale must be a finite number > 0")
    if not auto and (auto_epochs is not None or auto_scales):
        raise ConfigError("--auto-epochs/--auto-scale: only with --auto")
    if auto:
        if loss or resume:
            raise ConfigError(f"--auto: chooses the loss terms itself; drop {'--loss' if loss else '--resume'}")
        return run_auto(cfg, out, overwrite=overwrite, config_path=config_path, search_epochs=auto_epochs,
                        scales=tuple(auto_scales or (1.0,)), log=log, trust_code=trust_code)
    if loss:
        cfg = with_terms(cfg, loss_terms(loss), str(config_path) if config_path else None)
    return run_distill(cfg, out, overwrite=overwrite, config_path=config_path, resume=resume, trust_code=trust_code)
