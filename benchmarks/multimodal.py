"""Multimodal knowledge fusion on AV-Digits hard: the evidence for cross-modal students, several
teachers, missing modalities and corrupted modalities.

    python benchmarks/multimodal.py --splits official unseen-speaker --seeds 0 1 2
    python benchmarks/multimodal.py --merge a.json b.json      # combine partial runs into one table

Per split and seed it trains the packaged AV-Digits teacher (audio-visual), the same recipe
restricted to one modality (an image teacher and an audio teacher), and students built from the
packaged student recipe, all with the recipes' schedules. Four tables:

1. cross-modal: audio-only and image-only students from scratch vs distilled (KD, T = 4) from the
   audio-visual teacher;
2. several teachers: the image teacher + the audio teacher fused into one audio-visual student by
   each ensemble strategy (KD on the per-sample mixture; ``features`` adds FitNets hints from each
   teacher's encoder to the matching student encoder), against KD from the single audio-visual
   teacher and the student from scratch;
3. missing modalities: accuracy for every subset of modalities, for the student trained plainly
   and for the one trained with modality dropout (0.3 per modality) plus KD from the full teacher;
4. corruptions: accuracy under each corruption kind and severity (``mmdistill.data.corruptions``),
   teacher vs the students of table 3.

Writes benchmarks/results/multimodal.{md,json} (or ``--name``).
"""
from __future__ import annotations

import argparse
import json
import time

import torch
from _common import RESULTS, fmt, markdown_table, save, small_recipe

from mmdistill import api
from mmdistill.config import parse_config
from mmdistill.data import build_data
from mmdistill.data.corruptions import SEVERITIES, corrupter
from mmdistill.evaluate import accuracy, evaluate_model, predict
from mmdistill.models import build_model, count_parameters
from mmdistill.runs import subset_accuracies

KD = [{"name": "kd", "temperature": 4.0}]
# each unimodal teacher's embedding, placed through the models' feature points
HINTS = [{"name": "fitnet", "weight": 1.0, "source": m} for m in ("image", "audio")]
STRATEGIES = ("average", "fixed", "confidence", "entropy")
CORRUPTIONS = (("image", "gaussian_noise"), ("image", "occlusion"), ("audio", "noise_snr"), ("audio", "time_shift"))
MODALITY_DROPOUT = {"image": 0.3, "audio": 0.3}


class Bench:
    def __init__(self, split: str, seed: int, device: str, overrides: list[str]):
        self.split, self.seed, self.device = split, seed, device
        common = {"seed": seed, "device": device}
        self.tcfg = parse_config(small_recipe("teacher") | common | {"data": {**small_recipe("teacher")["data"], "split": split}})
        self.scfg = parse_config(small_recipe("student") | common | {"data": {**small_recipe("student")["data"], "split": split}})
        self.ttrain = self.tcfg.train.model_copy(update={"progress": False})
        self.strain = self.scfg.train.model_copy(update={"progress": False})
        for key, value in (o.split("=", 1) for o in overrides):  # e.g. epochs=1 for a smoke run
            self.ttrain = self.ttrain.model_copy(update={key: type(getattr(self.ttrain, key))(value)})
            self.strain = self.strain.model_copy(update={key: type(getattr(self.strain, key))(value)})
        self.data = build_data(self.tcfg.data, seed=seed, val_fraction=self.ttrain.val_fraction)
        self.dev = api.resolve_device(device)
        self.records: list[dict] = []

    def record(self, table: str, row: str, model, seconds: float, **extra) -> None:
        acc = evaluate_model(model, self.data.test, device=self.dev, latency=False)["accuracy"]
        self.records.append({"split": self.split, "seed": self.seed, "table": table, "row": row, "accuracy": acc,
                             "params": count_parameters(model), "seconds": round(seconds, 1), **extra})
        print(f"{self.split:15s} seed {self.seed} {table:14s} {row:45s} {acc:.4f} ({seconds:.0f} s)", flush=True)

    def teacher(self, modalities=None):
        model_cfg = self.tcfg.model.model_copy(update={"modalities": modalities})
        model = build_model(model_cfg, self.data.specs, self.data.num_classes)
        start = time.perf_counter()
        fit = api.train(model, self.data, self.ttrain, device=self.device, seed=self.seed)
        return model, time.perf_counter() - start, fit.best_val_accuracy

    def student(self, modalities=None, teachers=None, terms=KD, ensemble="average", **train_updates):
        model = build_model(self.scfg.model.model_copy(update={"modalities": modalities}), self.data.specs,
                            self.data.num_classes)
        cfg = self.strain.model_copy(update=train_updates)
        start = time.perf_counter()
        if teachers is None:
            fit = api.train(model, self.data, cfg, device=self.device, seed=self.seed)
        else:
            fit = api.distill(model, teachers, self.data, terms=terms, ensemble=ensemble, cfg=cfg,
                              device=self.device, seed=self.seed)
        return model, time.perf_counter() - start, fit

    def corruption_rows(self, row: str, model) -> None:
        for modality, kind in CORRUPTIONS:
            for severity in range(1, len(SEVERITIES[kind]) + 1):
                logits, labels = predict(model, self.data.test, device=self.dev,
                                         transform=corrupter([f"{modality}:{kind}:{severity}"], seed=self.seed))
                self.records.append({"split": self.split, "seed": self.seed, "table": "corruptions", "row": row,
                                     "corruption": f"{modality}:{kind}", "severity": severity,
                                     "accuracy": accuracy(logits, labels)})

    def run(self, corruptions_only: bool = False) -> list[dict]:
        av, sec, _ = self.teacher()
        self.record("teachers", "audio-visual teacher", av, sec)
        if corruptions_only:  # table 4 alone: the teacher and the three students it compares
            plain = self.student()[0]
            single = self.student(None, av)[0]
            robust = self.student(None, av, modality_dropout=MODALITY_DROPOUT)[0]
            self.records = []
            self.corruptions(av, plain, single, robust)
            return self.records
        unimodal = {}
        for m in ("image", "audio"):
            unimodal[m], sec, val = self.teacher([m])
            self.record("teachers", f"{m} teacher", unimodal[m], sec, val_accuracy=val)
        # 1. cross-modal students
        for m in ("audio", "image"):
            model, sec, _ = self.student([m])
            self.record("cross-modal", f"{m}-only student, from scratch", model, sec)
            model, sec, _ = self.student([m], av)
            self.record("cross-modal", f"{m}-only student, KD from audio-visual teacher", model, sec)
        # 2. several teachers
        plain, sec, _ = self.student()
        self.record("teachers", "student from scratch", plain, sec)
        single, sec, _ = self.student(None, av)
        self.record("several", "KD from the audio-visual teacher", single, sec)
        pair = {"image": unimodal["image"], "audio": unimodal["audio"]}
        for strategy in STRATEGIES:
            ensemble = {"strategy": strategy}
            if strategy == "fixed":  # a priori weights: each teacher's validation accuracy
                ensemble["weights"] = {m: r["val_accuracy"] for m in pair for r in self.records
                                       if r["row"] == f"{m} teacher"}
            model, sec, fit = self.student(None, pair, KD, ensemble)
            weights = {k.removeprefix("teacher_weight_"): v for k, v in fit.history[-1].items()
                       if k.startswith("teacher_weight_")}
            self.record("several", f"image + audio teachers, {strategy}", model, sec, teacher_weights=weights)
        model, sec, fit = self.student(None, pair, KD + HINTS, {"strategy": "confidence"})
        self.record("several", "image + audio teachers, confidence + features", model, sec)
        # 3. missing modalities
        robust, sec, _ = self.student(None, av, modality_dropout=MODALITY_DROPOUT)
        self.record("missing", "KD + modality dropout", robust, sec)
        for row, model in (("audio-visual teacher", av), ("student from scratch", plain),
                           ("KD + modality dropout", robust)):
            for subset, acc in subset_accuracies(model, self.data.test, device=self.dev).items():
                self.records.append({"split": self.split, "seed": self.seed, "table": "subsets", "row": row,
                                     "subset": subset, "accuracy": acc})
        self.corruptions(av, plain, single, robust)
        return self.records

    def corruptions(self, av, plain, single, robust) -> None:
        """Table 4; the models are kept (ignored by git) to re-evaluate them without retraining."""
        models = RESULTS.parent / ".models"
        models.mkdir(exist_ok=True)
        for row, model in (("audio-visual teacher", av), ("student from scratch", plain),
                           ("KD from the audio-visual teacher", single), ("KD + modality dropout", robust)):
            torch.save(model.state_dict(), models / f"{self.split}-seed{self.seed}-{row.replace(' ', '_')}.pt")
            self.corruption_rows(row, model)


def tables(records: list[dict]) -> str:
    splits = list(dict.fromkeys(r["split"] for r in records))
    out = []

    def cell(rows):
        seeds = len(rows)
        return f"{fmt([r['accuracy'] for r in rows])}" + ("" if seeds == 3 else f" ({seeds} seeds)")

    def select(**match):
        return [r for r in records if all(r.get(k) == v for k, v in match.items())]

    def row_names(table):
        return list(dict.fromkeys(r["row"] for r in records if r["table"] == table))

    out.append("## 1. Cross-modal students (test accuracy %, mean ± std over seeds)\n")
    rows = [[name, *(cell(select(table=t, row=name, split=s)) for s in splits)]
            for t in ("teachers", "cross-modal") for name in row_names(t)]
    out.append(markdown_table(["model", *splits], rows))
    out.append("\n## 2. Several teachers into one audio-visual student\n")
    rows = []
    for name in ["student from scratch", *row_names("several")]:
        table = "teachers" if name == "student from scratch" else "several"
        cells = [cell(select(table=table, row=name, split=s)) for s in splits]
        weights = [r.get("teacher_weights") for r in select(table=table, row=name) if r.get("teacher_weights")]
        mean_w = ""
        if weights:
            names = list(weights[0])
            mean_w = ", ".join(f"{n} {sum(w[n] for w in weights) / len(weights):.2f}" for n in names)
        rows.append([name, *cells, mean_w])
    out.append(markdown_table(["student", *splits, "mean teacher weight (last epoch)"], rows))
    out.append("\n## 3. Accuracy with only some modalities present\n")
    subsets = list(dict.fromkeys(r["subset"] for r in records if r["table"] == "subsets"))
    rows = [[name, split, *(cell(select(table="subsets", row=name, split=split, subset=sub)) for sub in subsets)]
            for name in row_names("subsets") for split in splits]
    out.append(markdown_table(["model", "split", *subsets], rows))
    out.append("\n## 4. Accuracy under corruption (severity 1 mild .. 5 severe)\n")
    for split in splits:
        out.append(f"\n### {split}\n")
        kinds = list(dict.fromkeys(r["corruption"] for r in records if r["table"] == "corruptions"))
        header = ["corruption", "model", *(f"s{s}" for s in range(1, 6))]
        rows = []
        for kind in kinds:
            for name in row_names("corruptions"):
                rows.append([kind, name, *(fmt([r["accuracy"] for r in select(table="corruptions", row=name,
                                                                                  split=split, corruption=kind,
                                                                                  severity=s)], digits=1)
                                           for s in range(1, 6))])
        out.append(markdown_table(header, rows))
    return "\n".join(out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--splits", nargs="+", default=["official", "unseen-speaker"])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--device", default="auto")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--set", dest="overrides", action="append", default=[],
                        help="train option for every model, e.g. epochs=1 (smoke run)")
    parser.add_argument("--name", default="multimodal")
    parser.add_argument("--merge", nargs="+", default=None, help="JSON files of earlier runs to combine")
    parser.add_argument("--corruptions-only", action="store_true", help="only table 4 (and its four models)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.merge:
        records = [r for path in args.merge for r in json.loads(open(path).read())["records"]]
    else:
        records = []
        for split in args.splits:
            for seed in args.seeds:
                records += Bench(split, seed, args.device, args.overrides).run(args.corruptions_only)
                save(args.name, {"args": vars(args), "records": records}, tables(records))  # partial results survive
    save(args.name, {"args": vars(args), "records": records}, tables(records))


if __name__ == "__main__":
    main()
