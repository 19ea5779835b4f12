"""A teacher we did not train: resemblyzer's pretrained GE2E speaker encoder, distilled into a small student.

FSDD (6 speakers, 3,000 clips), split by recording index: takes 0-4 of every speaker and digit are
the test set (300 clips), the rest train; 10% of the training recordings (stratified by speaker,
seeded) are the validation set, used for every model's model selection (best epoch), never for
anything else; nothing is chosen on the test set. Per seed:

1. **Embedding distillation, labels unused**: the student (the project's 8 kHz log-mel front end,
   ``[1, 32, 32]``, a 3-block CNN) learns the teacher's 256-d embedding on every training clip:
   ``cosine`` on its fused embedding through a linear adapter, ``gamma = 0`` (no cross-entropy),
   best epoch by the validation cosine loss (the engine's label-free path). The teacher's
   embeddings are computed once and served through the engine's teacher cache.
2. For each number of labels per speaker (1, 5, 20, all) a seeded, stratified choice of labelled
   training clips, then test accuracy (%) of:

   * ``mfcc_logreg``: the simplest baseline: 20 MFCCs (librosa, 8 kHz), their mean and standard
     deviation over time, standardised, logistic regression;
   * ``teacher_probe``: logistic regression on the teacher's embedding (the same probe for all
     probe rows: features standardised, L2 penalty C = 1, lbfgs; nothing tuned);
   * ``scratch``: the student trained from scratch with cross-entropy on the labelled clips;
   * ``distilled_probe``: logistic regression on the distilled student's fused embedding;
   * ``distilled_finetuned``: the distilled student, its head initialised from that probe,
     fine-tuned with cross-entropy on the labelled clips plus KD (T = 4) from the teacher's probe
     on every training clip, labelled or not.
   Every student trainer takes ``--steps`` optimisation steps (batch 64, Adam), validated
   ``--evals`` times.
3. Digits as a second task from the same distilled student, with every label: the same rows with
   digit labels (the teacher's digit probe, the student's digit probe and fine-tuning with KD from
   the teacher's digit probe, scratch, MFCC).

Cost: parameters, MACs per clip, and ONNX Runtime batch-1 latency (one thread, p50) of the
teacher (encoder + head) and of the student, both exported to ONNX here. ``torch``'s flop
counter does not see the fused LSTM kernel, so the teacher's MACs add the LSTM's 4 H (I + H)
per frame per layer to what it counts. The machine was shared by several jobs: latencies are
not from an idle machine; the ratio is measured in one process, one model after the other.

    python benchmarks/pretrained_teacher.py     # writes benchmarks/results/pretrained_teacher.{json,md}

Rows are appended to the JSON as they finish; a second run resumes (finished rows are kept).
"""
from __future__ import annotations

import argparse
import copy
import hashlib
import json
import math
import time
from pathlib import Path

import numpy as np
import torch

from _common import RESULTS, machine, markdown_table, mean_std, result_file

from mmdistill import api
from mmdistill.config import TrainConfig
from mmdistill.data import DATASETS, data_root, parse_options
from mmdistill.data.dataset import MultimodalDataset, split_validation
from mmdistill.data.fsdd import list_recordings
from mmdistill.distill.engine import Trainer
from mmdistill.distill.hooks import OUTPUT
from mmdistill.distill.tasks import DistillationTask
from mmdistill.evaluate import accuracy, predict
from mmdistill.models import kinds

LABELS = ("1", "5", "20", "all")
STUDENT = {"encoders": {"audio": {"type": "conv", "channels": [24, 48, 96]}}}
TEACHER = {"pretrained": "resemblyzer"}
COSINE = {"name": "cosine", "weight": 1.0}
KD = {"name": "kd", "weight": 1.0, "temperature": 4.0}
NAME = "pretrained_teacher"


# --- data -----------------------------------------------------------------------------------------
def load(root) -> dict:
    """Every FSDD clip's two front ends and both labels, the official test mask."""
    opts = parse_options("fsdd", {"label": "speaker", "ge2e": {}})
    train, test, info = DATASETS.get("fsdd")(data_root(root), opts, 0)
    recordings = list_recordings(data_root(root))
    digits = torch.tensor([r.digit for r in recordings])
    is_test = torch.tensor([r.index <= 4 for r in recordings])
    order = torch.cat([torch.nonzero(~is_test).flatten(), torch.nonzero(is_test).flatten()])  # builder's order
    return {"train": train, "test": test, "info": info, "digits_train": digits[order[:len(train)]],
            "digits_test": digits[order[len(train):]], "recordings": recordings, "order": order}


def relabel(ds: MultimodalDataset, labels: torch.Tensor, num_classes: int) -> MultimodalDataset:
    return MultimodalDataset(ds.modalities, labels, num_classes=num_classes,
                             kinds={k: s.kind for k, s in ds.specs.items()}, present=ds.present, groups=ds.groups,
                             name=ds.name)


def choose_labels(labels: torch.Tensor, per_class: str, seed: int) -> torch.Tensor:
    """Bool mask: ``per_class`` labelled samples of each class (all: every one), seeded and stratified."""
    if per_class == "all":
        return torch.ones(len(labels), dtype=torch.bool)
    rng = np.random.default_rng([seed, int(per_class), 0x5EA])
    keep = np.zeros(len(labels), dtype=bool)
    for c in torch.unique(labels).tolist():
        idx = np.flatnonzero(labels.numpy() == c)
        keep[rng.permutation(idx)[:int(per_class)]] = True
    return torch.from_numpy(keep)


def mfcc_features(recordings, order) -> np.ndarray:
    """[N, 40]: mean and std over time of 20 MFCCs of each 8 kHz clip (the builder's order)."""
    import librosa
    import soundfile

    out = []
    for i in order.tolist():
        wave, rate = soundfile.read(recordings[i].path, dtype="float32")
        m = librosa.feature.mfcc(y=wave, sr=rate, n_mfcc=20, n_fft=256, hop_length=80, n_mels=40)
        out.append(np.concatenate([m.mean(1), m.std(1)]))
    return np.stack(out)


# --- probes: logistic regression, folded into a linear layer --------------------------------------
def fit_probe(x: np.ndarray, y: np.ndarray, num_classes: int) -> tuple[np.ndarray, np.ndarray]:
    """(W [K, D], b [K]) of a standardised L2 logistic regression (C = 1), the scaler folded in, so
    logits = x @ W.T + b on raw features. Classes absent from ``y`` get a logit of -1e4."""
    from sklearn.linear_model import LogisticRegression

    mean, std = x.mean(0), x.std(0) + 1e-6
    clf = LogisticRegression(C=1.0, max_iter=5000).fit((x - mean) / std, y)
    coef, bias = clf.coef_, clf.intercept_
    if coef.shape[0] == 1:  # two classes: sklearn gives one row
        coef, bias = np.concatenate([-coef, coef]) / 2, np.concatenate([-bias, bias]) / 2
    w = np.zeros((num_classes, x.shape[1]))
    b = np.full(num_classes, -1e4)
    w[clf.classes_], b[clf.classes_] = coef / std, bias - (coef / std) @ mean
    return w.astype(np.float32), b.astype(np.float32)


def probe_accuracy(w, b, x, y) -> float:
    return 100 * float(((x @ w.T + b).argmax(1) == y).mean())


# --- models ---------------------------------------------------------------------------------------
@torch.no_grad()
def embeddings(model, dataset, path: str, batch_size: int = 256) -> torch.Tensor:
    """[N, D]: the output of module ``path`` of ``model`` on ``dataset`` (eval mode)."""
    from mmdistill.distill.hooks import FeatureCapture

    model.eval()
    capture = FeatureCapture(model, [path])
    return torch.cat([capture.run(model, batch)[path].float() for batch in dataset.loader(batch_size)])


def schedule(n: int, steps: int, evals: int, batch: int) -> tuple[MultimodalDataset | int, int]:
    """(repeats of the training set per epoch, epochs) for about ``steps`` steps in ``evals`` epochs."""
    per_epoch = max(1, steps // evals) * batch
    r = max(1, round(per_epoch / n))
    return r, max(1, round(steps / math.ceil(r * n / batch)))


def repeated(ds: MultimodalDataset, r: int) -> MultimodalDataset:
    return ds if r == 1 else ds.subset(np.tile(np.arange(len(ds)), r), ds.name)


def fit(task, train, val, args, seed, label, steps=None, teacher_outputs=None):
    """``teacher_outputs``: the teacher's outputs on ``train`` computed once ({path: [N, ...]}), which the
    distillation ``task`` is given (repeated like the training set) instead of running its teacher."""
    r, epochs = schedule(len(train), steps or args.steps, args.evals, args.batch)
    if teacher_outputs is not None:
        task.precomputed_outputs = [{k: v.repeat(r, *[1] * (v.dim() - 1)) for k, v in teacher_outputs.items()}]
    cfg = TrainConfig(epochs=epochs, batch_size=args.batch, progress=False,
                      optimizer={"name": "adam", "lr": args.lr}, scheduler={"name": "cosine"})
    result = Trainer(cfg, device="cpu", seed=seed, label=label).fit(task, repeated(train, r), val)
    return result, epochs


def best_epoch_note(result, epochs) -> dict:
    return {"best_epoch": result.best_epoch, "epochs": epochs,
            "converged": result.best_epoch <= epochs - max(1, epochs // 10)}


def with_head(teacher, w, b):
    """The teacher with its probe as head: a new linear layer (W, b), the frozen encoder shared."""
    out = copy.copy(teacher)
    out._modules = dict(teacher._modules)
    out.head = torch.nn.Linear(w.shape[1], w.shape[0])
    set_head(out, w, b)
    return out


def set_head(model, w, b) -> None:
    """Load a probe's (W, b) into the model's last linear layer."""
    head = model.head[-1] if isinstance(model.head, torch.nn.Sequential) else model.head
    with torch.no_grad():
        head.weight.copy_(torch.from_numpy(w))
        head.bias.copy_(torch.from_numpy(b))


# --- cost -----------------------------------------------------------------------------------------
def lstm_macs(lstm: torch.nn.LSTM, frames: int) -> int:
    size, h = lstm.input_size, lstm.hidden_size
    return frames * sum(4 * h * ((size if i == 0 else h) + h) for i in range(lstm.num_layers))


def cost(teacher, student, specs, args) -> dict:
    from mmdistill.export.profile import measure_cost

    out = {}
    for name, model in (("teacher", teacher), ("student", student)):
        c = measure_cost(model, specs, threads=1, repeats=args.latency_repeats, warmup=5, large_repeats=2,
                         eager=False, cuda=False)
        if name == "teacher":
            c["macs_counted"] = c["macs"]
            c["macs"] += lstm_macs(model.encoder.lstm, 160)
        out[name] = c
    return out


# --- one seed -------------------------------------------------------------------------------------
def run_seed(seed, data, mfcc, teacher, t_emb, args, rows, save) -> None:
    done = {(r["task"], r["labels_per_class"], r["model"]) for r in rows if r["seed"] == seed}
    torch.manual_seed(seed)
    train_all, test = data["train"], data["test"]
    n_train = len(train_all)
    tr_idx, va_idx = split_indices(train_all, seed)
    train, val = train_all.subset(tr_idx, "fsdd/train"), train_all.subset(va_idx, "fsdd/val")
    te_emb_t = t_emb[n_train:].numpy()
    tr_emb_t = t_emb[:n_train][tr_idx].numpy()
    specs = train.specs
    base = {"seed": seed, "train_clips": len(train), "val_clips": len(val), "test_clips": len(test), "machine": machine()}
    p_s, p_t = sum(p.numel() for p in student_model(specs, 6, seed).parameters()), sum(
        p.numel() for p in teacher.parameters())
    lat = args.cost

    # 1. embedding distillation on every training clip, labels unused
    start = time.perf_counter()
    student = student_model(specs, 6, seed)
    unlabelled = train.with_labels(torch.full((len(train),), -1))
    task = DistillationTask(student, teacher, api.make_terms([COSINE], student=student, teachers=[teacher]), gamma=0.0)
    result, epochs = fit(task, unlabelled, val, args, seed, "distil embedding", steps=args.distill_steps,
                         teacher_outputs={"encoder": t_emb[:n_train][tr_idx]})
    distill_info = {"val_cosine_loss": min(h["val_loss"] for h in result.history), **best_epoch_note(result, epochs),
                    "seconds": round(time.perf_counter() - start, 1)}
    print(f"seed {seed}: embedding distilled in {distill_info['seconds']} s, best epoch "
          f"{result.best_epoch}/{epochs}, val cosine loss {distill_info['val_cosine_loss']:.4f}", flush=True)
    s_emb_tr = embeddings(student, train, "fusion").numpy()
    s_emb_te = embeddings(student, test, "fusion").numpy()

    tasks = [("speaker", train.labels, val.labels, test.labels, 6, args.labels)]
    dig_train = data["digits_train"]
    tasks.append(("digit", dig_train[tr_idx], dig_train[va_idx], data["digits_test"], 10, ["all"]))
    mfcc_tr, mfcc_te = mfcc[:n_train][tr_idx], mfcc[n_train:]
    for task_name, y_tr, y_va, y_te, k, label_counts in tasks:
        tr = relabel(train, y_tr, k)
        va = relabel(val, y_va, k)
        te = relabel(test, y_te, k)
        for per_class in label_counts:
            mask = choose_labels(y_tr, per_class, seed)
            row = {**base, "task": task_name, "labels_per_class": per_class, "labelled_clips": int(mask.sum())}

            def record(model_name, acc, params, onnx_ms, **extra):
                save({**row, "model": model_name, "accuracy": acc, "params": params, "onnx_ms_b1": onnx_ms, **extra})

            key = lambda m: (task_name, per_class, m)  # noqa: E731
            y = y_tr[mask].numpy()
            if key("mfcc_logreg") not in done:
                w, b = fit_probe(mfcc_tr[mask.numpy()], y, k)
                record("mfcc_logreg", probe_accuracy(w, b, mfcc_te, y_te.numpy()), int(w.size + b.size), None)
            wt, bt = fit_probe(tr_emb_t[mask.numpy()], y, k)
            if key("teacher_probe") not in done:
                record("teacher_probe", probe_accuracy(wt, bt, te_emb_t, y_te.numpy()), p_t - 6 * 257 + k * 257,
                       lat["teacher"]["onnx_ms_b1"])
            ws, bs = fit_probe(s_emb_tr[mask.numpy()], y, k)
            if key("distilled_probe") not in done:
                record("distilled_probe", probe_accuracy(ws, bs, s_emb_te, y_te.numpy()), p_s - 6 * 97 + k * 97,
                       lat["student"]["onnx_ms_b1"], distillation=distill_info)
            labelled = tr.with_labels(torch.where(mask, y_tr, torch.full_like(y_tr, -1)))
            if key("scratch") not in done:
                model = student_model(specs, k, seed)
                result, epochs = fit(api_supervised(model), labelled.labelled_only(), va, args, seed, "scratch")
                record("scratch", test_accuracy(model, te), sum(p.numel() for p in model.parameters()),
                       lat["student"]["onnx_ms_b1"], **best_epoch_note(result, epochs))
            if key("distilled_finetuned") not in done:
                model = student_model(specs, k, seed)
                state = {n: v for n, v in student.state_dict().items() if not n.startswith("head.")}
                model.load_state_dict(state, strict=False)
                set_head(model, ws, bs)
                probe_teacher = with_head(teacher, wt, bt)
                ft = DistillationTask(model, probe_teacher, api.make_terms([KD]), gamma=1.0)
                result, epochs = fit(ft, labelled, va, args, seed, "fine-tune",
                                     teacher_outputs={OUTPUT: torch.from_numpy(tr_emb_t @ wt.T + bt)})
                record("distilled_finetuned", test_accuracy(model, te), sum(p.numel() for p in model.parameters()),
                       lat["student"]["onnx_ms_b1"], **best_epoch_note(result, epochs))
            print(f"seed {seed} {task_name} {per_class}: " + ", ".join(
                f"{r['model']} {r['accuracy']:.1f}" for r in rows
                if r["seed"] == seed and r["task"] == task_name and r["labels_per_class"] == per_class), flush=True)


def split_indices(train: MultimodalDataset, seed: int):
    """(train, validation) indices: 10% of the training recordings, stratified by speaker, seeded."""
    tagged = MultimodalDataset({"i": torch.arange(len(train)).float().unsqueeze(1)}, train.labels,
                               num_classes=train.num_classes)
    t, v = split_validation(tagged, 0.1, seed)
    return t.modalities["i"][:, 0].long(), v.modalities["i"][:, 0].long()


def student_model(specs, num_classes, seed):
    return kinds.build(STUDENT, specs, num_classes, seed=seed)


def api_supervised(model):
    from mmdistill.distill.tasks import SupervisedTask

    return SupervisedTask(model)


def test_accuracy(model, test) -> float:
    logits, labels = predict(model, test)
    return 100 * accuracy(logits, labels)


# --- report ---------------------------------------------------------------------------------------
MODELS = ("mfcc_logreg", "teacher_probe", "scratch", "distilled_probe", "distilled_finetuned")


def summarise(rows: list[dict], cost: dict) -> dict:
    out: dict = {"accuracy": {}, "goals": {}}
    for task in ("speaker", "digit"):
        for per_class in LABELS:
            for m in MODELS:
                values = [r["accuracy"] for r in rows if (r["task"], r["labels_per_class"], r["model"]) ==
                          (task, per_class, m)]
                if values:
                    mean, std = mean_std(values)
                    out["accuracy"].setdefault(task, {}).setdefault(per_class, {})[m] = {
                        "mean": mean, "std": std, "seeds": len(values)}

    def by_seed(task, per_class, m):
        return {r["seed"]: r["accuracy"] for r in rows if (r["task"], r["labels_per_class"], r["model"]) ==
                (task, per_class, m)}

    t5, sc5 = by_seed("speaker", "5", "teacher_probe"), by_seed("speaker", "5", "scratch")
    best5 = {s: max(by_seed("speaker", "5", "distilled_probe").get(s, -1),
                    by_seed("speaker", "5", "distilled_finetuned").get(s, -1))
             for s in by_seed("speaker", "5", "distilled_finetuned")}
    goals = out["goals"]
    if best5 and t5 and sc5:
        for m in ("distilled_probe", "distilled_finetuned"):
            d = by_seed("speaker", "5", m)
            seeds = sorted(set(d) & set(t5) & set(sc5))
            if seeds:
                acc = float(np.mean([d[s] for s in seeds]))
                goals[f"speaker_5_{m}"] = {
                    "accuracy": acc, "accuracy_goal": 90.0,
                    "fraction_of_teacher": acc / float(np.mean([t5[s] for s in seeds])),
                    "points_above_scratch": float(np.mean([d[s] - sc5[s] for s in seeds])),
                    "points_above_scratch_per_seed": [d[s] - sc5[s] for s in seeds], "seeds": seeds}
    if cost:
        goals["params_ratio"] = cost["teacher"]["params"] / cost["student"]["params"]
        goals["onnx_latency_ratio"] = cost["teacher"]["onnx_ms_b1"] / cost["student"]["onnx_ms_b1"]
    td, fd = by_seed("digit", "all", "teacher_probe"), by_seed("digit", "all", "distilled_finetuned")
    pd = by_seed("digit", "all", "distilled_probe")
    seeds = sorted(set(td) & set(fd))
    if seeds:
        goals["digit_all"] = {"teacher_probe": float(np.mean([td[s] for s in seeds])),
                              "distilled_finetuned": float(np.mean([fd[s] for s in seeds])),
                              "distilled_probe": float(np.mean([pd[s] for s in seeds if s in pd])) if pd else None,
                              "points_below_teacher": float(np.mean([td[s] - fd[s] for s in seeds]))}
    return out


def markdown(rows, summary, cost, settings) -> str:
    lines = [f"FSDD, test accuracy (%) on takes 0-4 (300 clips), mean ± std over seeds "
             f"{sorted({r['seed'] for r in rows})}; embedding distillation {settings['distill_steps']} steps, other student "
             f"trainings {settings['steps']} steps each. "
             "Machine shared with other jobs (latencies from one process, same conditions for both models).", ""]
    for task in ("speaker", "digit"):
        acc = summary["accuracy"].get(task, {})
        table = []
        for per_class in LABELS:
            if per_class not in acc:
                continue
            cells = [per_class]
            for m in MODELS:
                a = acc[per_class].get(m)
                cells.append(f"{a['mean']:.1f} ± {a['std']:.1f}" if a else "n/a")
            table.append(cells)
        if table:
            lines += [f"**{task}** ({6 if task == 'speaker' else 10} classes)", "",
                      markdown_table(["labels / class", *MODELS], table), ""]
    if cost:
        lines += [markdown_table(["model", "parameters", "MACs / clip", "ONNX ms, batch 1"],
                                 [[m, f"{c['params']:,}", f"{c['macs']:,}", f"{c['onnx_ms_b1']:.3f}"]
                                  for m, c in cost.items()]), ""]
    return "\n".join(lines)


def merge(parts: list[Path], out: Path) -> None:
    """One result file from parts with the same settings (seeds run in parallel processes)."""
    loaded = [json.loads(p.read_text()) for p in parts]
    first = loaded[0]
    for p, part in zip(parts, loaded):
        if part["settings"] != first["settings"]:
            raise SystemExit(f"{p}: other settings than {parts[0]}")
    rows = sorted((r for part in loaded for r in part["rows"]), key=lambda r: r["seed"])
    payload = {**first, "rows": rows, "parts": [str(p) for p in parts],
               "seconds": [part.get("seconds") for part in loaded]}
    payload["summary"] = summarise(rows, first["cost"])
    result_file(out, ".json").write_text(json.dumps(payload, indent=2) + "\n")
    text = markdown(rows, payload["summary"], first["cost"], first["settings"])
    result_file(out, ".md").write_text(text + "\n")
    print(text)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--labels", nargs="+", default=list(LABELS), choices=LABELS)
    parser.add_argument("--steps", type=int, default=200, help="optimisation steps per supervised/fine-tuning run")
    parser.add_argument("--distill-steps", type=int, default=600, help="optimisation steps of the embedding distillation")
    parser.add_argument("--evals", type=int, default=10, help="validation passes (epochs) per training")
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--latency-repeats", type=int, default=100)
    parser.add_argument("--data-root", default=None)
    parser.add_argument("--name", default=str(RESULTS / NAME), help="output path without suffix")
    parser.add_argument("--merge", nargs="+", default=None,
                        help="result files of parts run in parallel (same settings, other seeds) to merge into --name")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    out = Path(args.name)
    out.parent.mkdir(parents=True, exist_ok=True)
    if args.merge:
        return merge([Path(p) for p in args.merge], out)
    settings = {"steps": args.steps, "distill_steps": args.distill_steps, "evals": args.evals, "batch": args.batch, "lr": args.lr, "student": STUDENT,
                "teacher": TEACHER, "embedding_loss": COSINE, "kd": KD, "probe": "logistic regression, C=1, standardised",
                "validation": "10% of the training recordings, stratified by speaker, seeded",
                "split": "official: takes 0-4 test", "labels": args.labels}
    path = result_file(out, ".json")
    previous = json.loads(path.read_text()) if path.is_file() else {}
    rows = previous.get("rows", []) if previous.get("settings") == settings else []

    start = time.perf_counter()
    data = load(args.data_root)
    specs = data["train"].specs
    teacher = kinds.build(TEACHER, specs, 6, seed=0)
    both = MultimodalDataset({"ge2e": torch.cat([data["train"].modalities["ge2e"], data["test"].modalities["ge2e"]])},
                             torch.zeros(len(data["train"]) + len(data["test"]), dtype=torch.long), num_classes=6,
                             kinds={"ge2e": "sequence"})
    # the teacher's embeddings, the MFCCs and the cost are the same for every seed: computed once,
    # kept in the cache folder for the other processes of a parallel run (keyed by the inputs)
    from mmdistill.data.root import cache_dir

    key = hashlib.sha256(json.dumps([data["info"], teacher.provenance, STUDENT, args.latency_repeats],
                                    sort_keys=True, default=str).encode()).hexdigest()[:16]
    stored = cache_dir() / f"pretrained_teacher-inputs-{key}.pt"
    if stored.is_file():
        inputs = torch.load(stored, weights_only=True)
        t_emb, mfcc, cost_info = inputs["t_emb"], inputs["mfcc"].numpy(), json.loads(inputs["cost"])
    else:
        t_emb = embeddings(teacher, both, "encoder")
        mfcc = mfcc_features(data["recordings"], data["order"])
        cost_info = cost(teacher, student_model(specs, 6, 0), specs, args)
        torch.save({"t_emb": t_emb, "mfcc": torch.from_numpy(mfcc), "cost": json.dumps(cost_info)},
                   str(stored) + ".part")
        Path(str(stored) + ".part").replace(stored)
    print(f"teacher embeddings, MFCCs and cost of {len(both)} clips in {time.perf_counter() - start:.0f} s", flush=True)
    args.cost = cost_info
    payload = {"settings": settings, "provenance": teacher.provenance, "cost": cost_info, "rows": rows,
               "machine": "2 CPU cores shared with other jobs; torch and ONNX Runtime on 1 thread"}

    def save(row):
        rows.append(row)
        payload["summary"] = summarise(rows, cost_info)
        path.write_text(json.dumps(payload, indent=2) + "\n")

    for seed in args.seeds:
        run_seed(seed, data, mfcc, teacher, t_emb, args, rows, save)
    payload["summary"] = summarise(rows, cost_info)
    payload["seconds"] = round(time.perf_counter() - start)
    path.write_text(json.dumps(payload, indent=2) + "\n")
    text = markdown(rows, payload["summary"], cost_info, settings)
    result_file(out, ".md").write_text(text + "\n")
    print(text)
    print(json.dumps(payload["summary"]["goals"], indent=2))


if __name__ == "__main__":
    main()
