"""``mmdistill diagnose CONFIG``: a cheap check, before the full runs, of whether distilling the
config's teacher into its student is likely to help.

Evidence, all on the validation split (the test split is never read):

* ``teacher_val_accuracy``: the teacher with every modality; ``teacher_val_accuracy_student_view``:
  the teacher with only the student's modalities present (the others absent, as at inference);
* linear probes on the student's view (its modalities' inputs, flattened and standardised with the
  training split's statistics; multinomial logistic regression, L2 1e-3, L-BFGS):
  ``probe_accuracy`` fitted to the true labels, ``probe_teacher_accuracy`` fitted to the teacher's
  (all-modality) predictions and scored against the true labels, ``probe_teacher_fidelity`` the
  latter's agreement with the teacher, ``probe_teacher_agreement`` the label probe's agreement with
  the teacher;
* a short-budget trial: the student from scratch and with KD (T = 4, weight 1), same seed, for
  ``trial_epochs`` (default: a quarter of ``train.epochs``, at least 1).

``score`` (accuracy points) = mean of two estimates of what the teacher's labels add on the
student's view: ``trial_gain`` (KD minus scratch in the trial) and ``probe_gain``
(``probe_teacher_accuracy - probe_accuracy``). ``verdict``: ``likely to help`` at score >= 0.5,
``unlikely to help`` at score <= -0.5, else ``unclear``.
"""
from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from . import api
from .config import RunConfig
from .data.dataset import DataSplits, MultimodalDataset
from .errors import ConfigError
from .evaluate import accuracy, predict
from .models import build_model
from .rundir import DIAGNOSE, RunDir, write_json
from .runs import load_teachers, prepare

#: |score| (points) beyond which the verdict is not "unclear"
THRESHOLD = 0.5


def view_matrix(dataset: MultimodalDataset, modalities) -> torch.Tensor:
    """[N, D] float64: the modalities' inputs flattened side by side (absent samples stay zero)."""
    return torch.cat([dataset.modalities[m].reshape(len(dataset), -1).double() for m in modalities], dim=1)


def fit_probe(x: torch.Tensor, y: torch.Tensor, num_classes: int, *, l2: float = 1e-3,
              steps: int = 100) -> nn.Linear:
    """Multinomial logistic regression: min_W mean CE(W x_i, y_i) + l2 ||W||^2 (L-BFGS)."""
    torch.manual_seed(0)
    probe = nn.Linear(x.shape[1], num_classes).double()
    nn.init.zeros_(probe.weight)
    nn.init.zeros_(probe.bias)
    opt = torch.optim.LBFGS(probe.parameters(), lr=1, max_iter=steps, line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        loss = nn.functional.cross_entropy(probe(x), y) + l2 * probe.weight.pow(2).sum()
        loss.backward()
        return loss

    opt.step(closure)
    return probe


def probes(data: DataSplits, modalities, teacher_train: torch.Tensor, teacher_val: torch.Tensor) -> dict:
    """The linear-probe evidence (see the module docstring); ``teacher_*``: the teacher's predicted
    classes on the training and validation splits."""
    train, val = view_matrix(data.train, modalities), view_matrix(data.val, modalities)
    mean, std = train.mean(0), train.std(0)
    std = torch.where(std > 1e-8, std, torch.ones_like(std))
    train, val = (train - mean) / std, (val - mean) / std
    k = data.num_classes
    on_labels = fit_probe(train, data.train.labels, k)
    on_teacher = fit_probe(train, teacher_train, k)
    with torch.no_grad():
        p_labels, p_teacher = on_labels(val).argmax(1), on_teacher(val).argmax(1)
    truth = data.val.labels
    rate = lambda a, b: float((a == b).double().mean())  # noqa: E731
    return {"probe_accuracy": rate(p_labels, truth), "probe_teacher_accuracy": rate(p_teacher, truth),
            "probe_teacher_fidelity": rate(p_teacher, teacher_val), "probe_teacher_agreement": rate(p_labels, teacher_val)}


def diagnose(cfg: RunConfig, data: DataSplits, teacher: nn.Module, *, device="cpu", trial_epochs: int | None = None,
             log=None) -> dict:
    """The evidence, ``score`` and ``verdict`` for distilling ``teacher`` into ``cfg.model`` on ``data``."""
    if data.val is None:
        raise ConfigError("train.val_fraction: diagnose measures on the validation split; set it above 0")
    student_mods = list(cfg.model.modalities or cfg.model.encoders)
    trial_epochs = trial_epochs or max(1, cfg.train.epochs // 4)
    absent = [m for m in getattr(teacher, "modalities", []) if m not in student_mods]
    bs = cfg.train.eval_batch_size
    t_val, labels = predict(teacher, data.val, device=device, batch_size=bs)
    t_view, _ = predict(teacher, data.val, device=device, batch_size=bs, drop=absent)
    t_train, _ = predict(teacher, data.train, device=device, batch_size=bs)
    out = {"student_modalities": student_mods, "teacher_modalities": list(getattr(teacher, "modalities", [])),
           "teacher_val_accuracy": accuracy(t_val, labels),
           "teacher_val_accuracy_student_view": accuracy(t_view, labels)}
    out.update(probes(data, student_mods, t_train.argmax(1), t_val.argmax(1)))
    short = cfg.train.model_copy(update={"epochs": trial_epochs})
    trial = {}
    for name in ("scratch", "kd"):
        student = build_model(cfg.model, data.specs, data.num_classes, seed=cfg.seed)
        if name == "scratch":
            fit = api.train(student, data, short, device=str(device), seed=cfg.seed, label="diagnose: scratch")
        else:
            fit = api.distill(student, teacher, data, terms=[{"name": "kd", "temperature": 4.0, "weight": 1.0}],
                              cfg=short, device=str(device), seed=cfg.seed, label="diagnose: kd")
        trial[name] = fit.best_val_accuracy
        if log:
            log(f"diagnose: {trial_epochs}-epoch trial, {name}: val {fit.best_val_accuracy:.4f}")
    out.update(trial_epochs=trial_epochs, trial_scratch_val_accuracy=trial["scratch"],
               trial_kd_val_accuracy=trial["kd"])
    out["trial_gain"] = 100 * (trial["kd"] - trial["scratch"])
    out["probe_gain"] = 100 * (out["probe_teacher_accuracy"] - out["probe_accuracy"])
    out["headroom"] = 100 * (out["teacher_val_accuracy"] - trial["scratch"])
    out["score"] = (out["trial_gain"] + out["probe_gain"]) / 2
    out["verdict"] = ("likely to help" if out["score"] >= THRESHOLD else
                      "unlikely to help" if out["score"] <= -THRESHOLD else "unclear")
    return out


def run_diagnose(cfg: RunConfig, out: str | Path | None = None, *, overwrite: bool = False,
                 config_path: str | Path | None = None, trial_epochs: int | None = None, log=None,
                 trust_code: bool = False) -> dict:
    """Load the config's data and (first) teacher, :func:`diagnose`; with ``out``, write
    ``out/diagnose.json`` (a run directory)."""
    if cfg.distill is None:
        raise ConfigError("distill: section missing (it names the teacher checkpoint)")
    if trial_epochs is not None and trial_epochs < 1:
        raise ConfigError(f"--trial-epochs: {trial_epochs} must be at least 1")
    if cfg.train.val_fraction <= 0:
        raise ConfigError("train.val_fraction: diagnose measures on the validation split; set it above 0")
    device, data = prepare(cfg, out, overwrite=overwrite, config_path=config_path)
    teacher = next(iter(load_teachers(cfg, data, device, config_path, trust_code=trust_code).values()))
    if out is None:
        return diagnose(cfg, data, teacher, device=device, trial_epochs=trial_epochs, log=log)
    with RunDir(out, kind="diagnose", overwrite=overwrite, config=cfg.model_dump()) as run:
        result = diagnose(cfg, data, teacher, device=device, trial_epochs=trial_epochs, log=log)
        write_json(run / DIAGNOSE, result)
        return result
