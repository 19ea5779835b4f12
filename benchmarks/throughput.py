"""Training throughput: mmdistill's loop against plain PyTorch loops doing the same work (issue 12).

    python benchmarks/throughput.py                    # both pairs, 3 rounds (long: run it on an idle machine)
    python benchmarks/throughput.py --quick            # a tiny check that every row runs
    python benchmarks/throughput.py --torchdistill-python /path/to/venv/bin/python   # adds torchdistill
    python benchmarks/throughput.py --device cuda      # every row on the GPU (benchmarks/gpu_check.sh runs it)

Every measurement runs in a fresh process (``--worker``), the rows' order is rotated from round to
round, and each row reports the median over ``--rounds`` rounds of samples/s. A measurement trains
one warm-up epoch, excluded, then enough epochs for ``--steps`` timed optimiser steps; mmdistill's
rows go through the library API as a user would (``api.train``, ``api.distill``) and are timed by
the engine's own ``epoch_seconds`` (the training pass, without validation). Pairs:

- ``hinton``: Hinton et al.'s MNIST pair, teacher 784-1200-1200-10 and student 784-800-800-10
  (random weights, random inputs: throughput does not depend on them), batch 128, KD at T = 4
  with alpha 0.5, SGD with momentum 0.9, 20,000 in-memory samples;
- ``av_digits``: the packaged recipes' teacher and student (``mmdistill.recipes``) on the real
  AV-Digits training set (``MMDISTILL_DATA``), the student's batch size and optimiser, KD at T = 4,
  alpha 0.5 (the recipe's NST terms replaced by KD, so that every row does the same work).

The roofline is the samples/s at which the student's fp32 forward and backward matrix products
alone would run: for the Hinton pair, the three products of each linear layer (forward, input
gradient, weight gradient) timed as plain ``torch.mm`` calls of the same shapes; for AV-Digits, the
student's forward multiply-accumulates (``export.profile.count_macs``) times 3 (forward plus the
two backward products), at the FLOP rate of a batch-sized square ``torch.mm`` timed beside it.
torchdistill 1.1.5 (Hinton pair only) runs from ``--torchdistill-python``, the interpreter of a
separate virtual environment, made so (torchvision's wheel is installed without its dependencies:
its compiled ops need torch's CUDA build and this loop uses none of them, see
:func:`run_torchdistill`)::

    python3 -m venv tdvenv && tdvenv/bin/pip install torch==2.13.0 numpy pyyaml scipy cython pillow
    tdvenv/bin/pip install --no-deps torchdistill==1.1.5 torchvision==0.28.0

Without it that row is skipped, and the results say so.
Writes ``benchmarks/results/<name>.{json,md}``.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
PAIRS = ("hinton", "av_digits")
PLAIN = ("plain_student", "plain_kd_logits", "plain_kd_teacher")
MMD = ("mmdistill_train", "mmdistill_distill_cache", "mmdistill_distill_nocache")
EXTRAS = ("mmdistill_distill_cache_bf16", "mmdistill_distill_cache_compile", "mmdistill_distill_cache_deterministic")
ROWS = (*PLAIN, *MMD, *EXTRAS, "torchdistill")
LABELS = {
    "plain_student": "plain PyTorch, student only",
    "plain_kd_logits": "plain PyTorch, KD with precomputed teacher logits",
    "plain_kd_teacher": "plain PyTorch, KD with a teacher forward every step",
    "mmdistill_train": "mmdistill `train`, student only",
    "mmdistill_distill_cache": "mmdistill `distill`, teacher cache",
    "mmdistill_distill_nocache": "mmdistill `distill`, no cache",
    "mmdistill_distill_cache_bf16": "mmdistill `distill`, teacher cache, `precision: bf16`",
    "mmdistill_distill_cache_compile": "mmdistill `distill`, teacher cache, `compile: true`",
    "mmdistill_distill_cache_deterministic": "mmdistill `distill`, teacher cache, `deterministic: true`",
    "torchdistill": "torchdistill 1.1.5, KD with a teacher forward every step",
}
TORCHDISTILL_NOTE = ("torchdistill 1.1.5's DistillationBox with its KDLoss on the same MLPs, from its own venv; "
                     "torchvision (a dependency) is imported with its compiled ops' meta registrations "
                     "skipped, as its wheel needs torch's CUDA build; the loop uses none of its ops")
TEMPERATURE, ALPHA = 4.0, 0.5
HINTON = {"samples": 20000, "batch": 128, "teacher": [1200, 1200], "student": [800, 800],
          "optimizer": {"name": "sgd", "lr": 0.05, "momentum": 0.9, "weight_decay": 0.0}}


# --- worker side: one measurement per process ----------------------------------------------------
def epochs_for(args, steps_per_epoch: int) -> int:
    """Timed epochs: enough for ``args.steps`` optimiser steps."""
    return max(1, math.ceil(args.steps / steps_per_epoch))


def hinton_setup(args):
    import torch

    from mmdistill.data.dataset import DataSplits, MultimodalDataset

    n = args.samples or HINTON["samples"]
    g = torch.Generator().manual_seed(0)
    x = torch.rand(n, 1, 28, 28, generator=g)
    y = torch.randint(0, 10, (n,), generator=g)
    data = DataSplits(train=MultimodalDataset({"image": x}, y, num_classes=10, kinds={"image": "image"}, name="train"),
                      test=MultimodalDataset({"image": x[:1]}, y[:1], num_classes=10, name="test"))
    return data, HINTON["batch"], HINTON["optimizer"], {"encoders": {"image": {"type": "mlp", "hidden": HINTON["teacher"]}}}, \
        {"encoders": {"image": {"type": "mlp", "hidden": HINTON["student"]}}}


def av_setup(args):
    from mmdistill.config import parse_config
    from mmdistill.data import build_data
    from mmdistill.demo import recipe

    tcfg, scfg = parse_config(recipe("av_digits_teacher")), parse_config(recipe("av_digits_student"))
    data = build_data(scfg.data, seed=0, val_fraction=0.0)
    if args.samples:
        data.train = data.train.subset(range(min(args.samples, len(data.train))))
    opt = scfg.train.optimizer.model_dump()
    return data, scfg.train.batch_size, opt, tcfg.model.model_dump(exclude_none=True), scfg.model.model_dump(exclude_none=True)


def plain_optimizer(params, opt: dict):
    import torch

    if opt["name"] == "sgd":
        return torch.optim.SGD(params, lr=opt["lr"], momentum=opt["momentum"], weight_decay=opt["weight_decay"])
    cls = torch.optim.AdamW if opt["name"] == "adamw" else torch.optim.Adam
    return cls(params, lr=opt["lr"], weight_decay=opt["weight_decay"])


def plain_models(args, data, teacher_cfg, student_cfg):
    """Plain ``nn.Sequential`` MLPs for the Hinton pair; for AV-Digits the recipes' models (plain
    modules taking a dict of tensors) built by mmdistill's model registry."""
    import torch
    from torch import nn

    torch.manual_seed(0)
    if args.pair == "hinton":
        def mlp(hidden):
            dims = [784, *hidden]
            layers = [nn.Flatten()]
            for a, b in zip(dims, dims[1:]):
                layers += [nn.Linear(a, b), nn.ReLU()]
            return nn.Sequential(*layers, nn.Linear(dims[-1], 10))
        return mlp(HINTON["teacher"]), mlp(HINTON["student"]), lambda x: x["image"]
    from mmdistill.models import build_model

    teacher = build_model(teacher_cfg, data.specs, data.num_classes)
    student = build_model(student_cfg, data.specs, data.num_classes)
    return teacher, student, lambda x: x


def run_plain(args, row: str) -> dict:
    import torch
    import torch.nn.functional as F

    data, batch, opt, tcfg, scfg = SETUPS[args.pair](args)
    device = torch.device(args.device)
    teacher, student, inputs = plain_models(args, data, tcfg, scfg)
    teacher.eval().requires_grad_(False)
    teacher.to(device)
    student.to(device)
    train = data.train
    xs = {m: t for m, t in train.modalities.items()}
    ys, n = train.labels, len(train.labels)
    optimizer = plain_optimizer(student.parameters(), opt)
    logits_all = None
    if row == "plain_kd_logits":
        with torch.no_grad():
            logits_all = torch.cat([teacher(inputs({m: t[i:i + 1024].to(device) for m, t in xs.items()}))
                                    for i in range(0, n, 1024)])
    steps_per_epoch = math.ceil(n / batch)
    timed = epochs_for(args, steps_per_epoch)
    g = torch.Generator().manual_seed(0)
    seconds = 0.0
    for epoch in range(1 + timed):
        start = time.perf_counter()
        perm = torch.randperm(n, generator=g)
        for i in range(0, n, batch):
            idx = perm[i:i + batch]
            # gathered on the host and copied per batch, as mmdistill's loader does
            x = inputs({m: t[idx].to(device, non_blocking=True) for m, t in xs.items()})
            y = ys[idx].to(device, non_blocking=True)
            s = student(x)
            loss = F.cross_entropy(s, y)
            if row != "plain_student":
                if logits_all is not None:
                    t = logits_all[idx.to(device)]
                else:
                    with torch.no_grad():
                        t = teacher(x)
                kd = F.kl_div(F.log_softmax(s / TEMPERATURE, 1), F.log_softmax(t / TEMPERATURE, 1),
                              reduction="batchmean", log_target=True) * TEMPERATURE ** 2
                loss = ALPHA * kd + (1 - ALPHA) * loss
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
        sync(device)
        if epoch:  # the first epoch is the warm-up
            seconds += time.perf_counter() - start
    return {"samples_per_s": timed * n / seconds, "timed_steps": timed * steps_per_epoch,
            "student_params": sum(p.numel() for p in student.parameters())}


def run_mmdistill(args, row: str) -> dict:
    import torch

    from mmdistill import api
    from mmdistill.config import TrainConfig
    from mmdistill.models import build_model

    data, batch, opt, tcfg, scfg = SETUPS[args.pair](args)
    torch.manual_seed(0)
    teacher = build_model(tcfg, data.specs, data.num_classes)
    student = build_model(scfg, data.specs, data.num_classes)
    steps_per_epoch = math.ceil(len(data.train) / batch)
    timed = epochs_for(args, steps_per_epoch)
    cfg = TrainConfig(epochs=1 + timed, batch_size=batch, optimizer=opt, val_fraction=0.0, progress=False,
                      cache_teacher="nocache" not in row, precision="bf16" if row.endswith("bf16") else "fp32",
                      compile=row.endswith("compile"), deterministic=row.endswith("deterministic"))
    if row == "mmdistill_train":
        fit = api.train(student, data, cfg, device=args.device)
    else:
        fit = api.distill(student, teacher, data, terms=[{"name": "kd", "weight": ALPHA, "temperature": TEMPERATURE}],
                          gamma=1 - ALPHA, cfg=cfg, device=args.device)
    seconds = sum(r["epoch_seconds"] for r in fit.history[1:])
    return {"samples_per_s": timed * len(data.train) / seconds, "timed_steps": timed * steps_per_epoch,
            "student_params": sum(p.numel() for p in student.parameters())}


def run_torchdistill(args, row: str) -> dict:
    """torchdistill 1.1.5's DistillationBox with its KDLoss, on the Hinton pair's plain MLPs.

    torchvision's compiled ops do not load beside the CPU build of torch 2.13 (its wheel needs
    torch's CUDA libraries); torchdistill uses none of them for this loop, so the meta-kernel
    registrations that need them are skipped before torchvision is imported."""
    import types

    sys.modules.setdefault("torchvision._meta_registrations", types.ModuleType("torchvision._meta_registrations"))
    import torch
    from torch.utils.data import RandomSampler, TensorDataset
    from torchdistill.core.distillation import get_distillation_box

    if args.pair != "hinton":
        raise SystemExit("torchdistill is measured on the hinton pair only")
    n = args.samples or HINTON["samples"]
    g = torch.Generator().manual_seed(0)
    x, y = torch.rand(n, 1, 28, 28, generator=g), torch.randint(0, 10, (n,), generator=g)
    teacher, student, _ = plain_models(args, None, None, None)
    sub = {"criterion": {"key": "KDLoss", "kwargs": {
        "student_module_path": ".", "student_module_io": "output", "teacher_module_path": ".",
        "teacher_module_io": "output", "temperature": TEMPERATURE, "alpha": ALPHA, "reduction": "batchmean"}},
        "weight": 1.0}
    opt = HINTON["optimizer"]
    config = {
        "train_data_loader": {"dataset_id": "train", "sampler": {"class_or_func": RandomSampler, "kwargs": {}},
                              "kwargs": {"batch_size": HINTON["batch"], "num_workers": 0}},
        "teacher": {"sequential": [], "requires_grad": False, "forward_proc": "forward_batch_only"},
        "student": {"sequential": [], "requires_grad": True, "forward_proc": "forward_batch_only"},
        "optimizer": {"key": "SGD", "kwargs": {"lr": opt["lr"], "momentum": opt["momentum"],
                                               "weight_decay": opt["weight_decay"]}},
        "criterion": {"key": "WeightedSumLoss", "kwargs": {"sub_terms": {"kd": sub}}},
        "num_epochs": 1 + epochs_for(args, math.ceil(n / HINTON["batch"])),
    }
    box = get_distillation_box(teacher, student, {"train": TensorDataset(x, y)}, config, torch.device("cpu"),
                               None, False, 1.0)
    steps_per_epoch = math.ceil(n / HINTON["batch"])
    timed = epochs_for(args, steps_per_epoch)
    seconds = 0.0
    for epoch in range(1 + timed):
        box.pre_epoch_process(epoch=epoch)
        start = time.perf_counter()
        for sample_batch, targets, supp_dict in box.train_data_loader:
            loss = box.forward_process(sample_batch, targets, supp_dict)
            box.post_forward_process(loss=loss)
        if epoch:
            seconds += time.perf_counter() - start
        box.post_epoch_process()
    return {"samples_per_s": timed * n / seconds, "timed_steps": timed * steps_per_epoch,
            "student_params": sum(p.numel() for p in student.parameters())}


def sync(device) -> None:
    """Wait for the device's queued work (CUDA) before a host clock is read."""
    import torch

    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


def run_roofline(args, row: str) -> dict:
    """The student's fp32 matrix-product limit in samples/s (see the module docstring)."""
    import torch

    device = torch.device(args.device)

    def timed(fn, reps):
        for _ in range(3):
            fn()
        sync(device)
        start = time.perf_counter()
        for _ in range(reps):
            fn()
        sync(device)
        return (time.perf_counter() - start) / reps

    reps = 5 if args.quick else 50
    data, batch, _, _, scfg = SETUPS[args.pair](args)
    if args.pair == "hinton":
        dims = [784, *HINTON["student"], 10]
        mats = []
        for a, b in zip(dims, dims[1:]):
            x, w, gy = (torch.randn(batch, a, device=device), torch.randn(b, a, device=device),
                        torch.randn(batch, b, device=device))
            mats.append((x, w, gy))

        def step():
            for x, w, gy in mats:
                torch.mm(x, w.t())   # forward
                torch.mm(gy, w)      # input gradient
                torch.mm(gy.t(), x)  # weight gradient
        seconds = timed(step, reps)
        flops = sum(3 * 2 * batch * a * b for a, b in zip(dims, dims[1:]))
        return {"samples_per_s": batch / seconds, "gflops": flops / seconds / 1e9, "flops_per_sample": flops / batch}
    from mmdistill.export.profile import count_macs
    from mmdistill.models import build_model

    student = build_model(scfg, data.specs, data.num_classes)
    flops = 3 * 2 * count_macs(student, data.specs) * batch
    a = torch.randn(batch, 512, device=device)
    b = torch.randn(512, 512, device=device)
    seconds = timed(lambda: torch.mm(a, b), reps * 10)
    rate = 2 * batch * 512 * 512 / seconds
    return {"samples_per_s": rate / (flops / batch), "gflops": rate / 1e9, "flops_per_sample": flops / batch}


SETUPS = {"hinton": hinton_setup, "av_digits": av_setup}


def worker(args) -> None:
    import torch

    torch.set_num_threads(args.threads) if args.threads else None
    row = args.worker
    run = (run_roofline if row == "roofline" else run_plain if row in PLAIN
           else run_torchdistill if row == "torchdistill" else run_mmdistill)
    print("RESULT " + json.dumps(run(args, row)))


# --- driver side ----------------------------------------------------------------------------------
def measure(args, pair: str, row: str) -> dict:
    python = args.torchdistill_python if row == "torchdistill" else sys.executable
    cmd = [python, str(Path(__file__).resolve()), "--worker", row, "--pair", pair, "--steps", str(args.steps)]
    cmd += ["--samples", str(args.samples)] if args.samples else []
    cmd += ["--threads", str(args.threads)] if args.threads else []
    cmd += ["--quick"] if args.quick else []
    cmd += ["--device", args.device]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(HERE.parent / "src"), os.environ.get("PYTHONPATH")]))}
    if row == "torchdistill":
        env["PYTHONPATH"] = ""  # its own virtual environment, not mmdistill's
    done = subprocess.run(cmd, capture_output=True, text=True, env=env)
    lines = [line for line in done.stdout.splitlines() if line.startswith("RESULT ")]
    if done.returncode or not lines:
        tail = (done.stderr.strip().splitlines() or ["no output"])[-1]
        raise SystemExit(f"{pair}/{row} failed: {tail}")
    return json.loads(lines[-1].removeprefix("RESULT "))


def rows_for(args, pair: str) -> tuple[list[str], dict[str, str]]:
    rows = [r for r in args.rows if r != "torchdistill" or pair == "hinton"]
    skipped = {}
    if "torchdistill" in args.rows and pair != "hinton":
        skipped["torchdistill"] = "not measured: the torchdistill row runs the Hinton pair only"
    if "torchdistill" in rows and args.device != "cpu":
        rows.remove("torchdistill")
        skipped["torchdistill"] = "not measured: the torchdistill row runs on the CPU only"
    if "torchdistill" in rows and not args.torchdistill_python:
        rows.remove("torchdistill")
        skipped["torchdistill"] = ("not measured: no --torchdistill-python given (torchdistill needs torchvision, "
                                   "which does not import beside this environment's CPU torch)")
    return rows, skipped


def summarise(pair: str, runs: dict[str, list[dict]], roofline: list[dict]) -> dict:
    med = {row: statistics.median(r["samples_per_s"] for r in rs) for row, rs in runs.items()}
    roof = statistics.median(r["samples_per_s"] for r in roofline) if roofline else None
    out = {"samples_per_s": med, "rounds": {row: [r["samples_per_s"] for r in rs] for row, rs in runs.items()},
           "student_params": {row: rs[0].get("student_params") for row, rs in runs.items()},
           "roofline_samples_per_s": roof,
           "roofline_gflops": statistics.median(r["gflops"] for r in roofline) if roofline else None,
           "percent_of_roofline": {row: 100 * v / roof for row, v in med.items()} if roof else {}}
    ratios = {}
    for a, b in (("mmdistill_distill_cache", "plain_student"), ("mmdistill_distill_cache", "plain_kd_logits"),
                 ("mmdistill_distill_nocache", "plain_kd_teacher"), ("mmdistill_train", "plain_student"),
                 ("mmdistill_distill_cache", "torchdistill"), ("mmdistill_distill_nocache", "torchdistill"),
                 ("mmdistill_distill_cache_bf16", "mmdistill_distill_cache"),
                 ("mmdistill_distill_cache_compile", "mmdistill_distill_cache"),
                 ("mmdistill_distill_cache_deterministic", "mmdistill_distill_cache")):
        if a in med and b in med:
            ratios[f"{a} / {b}"] = med[a] / med[b]
    out["ratios"] = ratios
    return out


def markdown(result: dict) -> str:
    lines = ["# Training throughput", "",
             f"{result['rounds']} rounds, a fresh process per measurement, the order rotated; medians; "
             f"one warm-up epoch excluded, then at least {result['steps']} timed steps; "
             f"{result['threads'] or 'default'} threads; {result['machine']}.", ""]
    for pair, res in result["pairs"].items():
        lines += [f"## {pair}", "", "| loop | samples/s | % of roofline |", "|---|---|---|"]
        for row, value in res["samples_per_s"].items():
            pct = res["percent_of_roofline"].get(row)
            lines.append(f"| {LABELS[row]} | {value:,.0f} | {pct:.0f} % |" if pct is not None
                         else f"| {LABELS[row]} | {value:,.0f} | |")
        for row, why in res["skipped"].items():
            lines.append(f"| {LABELS[row]} | {why} | |")
        if res["roofline_samples_per_s"]:
            lines += ["", f"Roofline: {res['roofline_samples_per_s']:,.0f} samples/s, the student's fp32 forward and "
                      f"backward matrix products at {res['roofline_gflops']:.1f} GFLOP/s (see the script's docstring)."]
        if res.get("notes"):
            lines += ["", *(f"- {LABELS[row]}: {note}" for row, note in res["notes"].items())]
        lines += ["", "| ratio | value |", "|---|---|"]
        lines += [f"| {k} | {v:.2f}x |" for k, v in res["ratios"].items()]
        lines.append("")
    return "\n".join(lines)


def machine(device: str) -> str:
    """The machine in words: CPU count, and the GPU where the rows ran on one."""
    import torch

    if device == "cuda":
        return f"{os.cpu_count()} CPUs, {torch.cuda.get_device_name()}, torch {torch.__version__}"
    return f"{os.cpu_count()} CPUs, torch CPU"


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--pairs", nargs="+", choices=PAIRS, default=list(PAIRS))
    p.add_argument("--rows", nargs="+", choices=ROWS, default=list(ROWS))
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--steps", type=int, default=300, help="timed optimiser steps per measurement (at least)")
    p.add_argument("--samples", type=int, default=0, help="training samples (default: 20,000 for hinton, all AV-Digits)")
    p.add_argument("--threads", type=int, default=0, help="torch threads per measurement (default: torch's)")
    p.add_argument("--quick", action="store_true", help="1 round, 1,024 samples, 8 steps: checks that every row runs")
    p.add_argument("--torchdistill-python", default=None, help="interpreter of a venv with torchdistill 1.1.5")
    p.add_argument("--name", default="throughput", help="result file name (or path without suffix)")
    p.add_argument("--keep-going", action="store_true", help="record a failing row (skipped: failed) and go on")
    p.add_argument("--device", default="cpu", choices=("cpu", "cuda"), help="where every row trains (default cpu)")
    p.add_argument("--worker", choices=(*ROWS, "roofline"), help=argparse.SUPPRESS)
    p.add_argument("--pair", choices=PAIRS, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.quick:
        args.rounds, args.samples, args.steps = 1, args.samples or 1024, 8
    if args.worker:
        return worker(args)
    result = {"rounds": args.rounds, "steps": args.steps, "samples": args.samples or None, "threads": args.threads,
              "quick": args.quick, "machine": machine(args.device), "device": args.device, "pairs": {}}
    for pair in args.pairs:
        rows, skipped = rows_for(args, pair)
        runs: dict[str, list[dict]] = {row: [] for row in rows}
        roofline = []
        for r in range(args.rounds):
            order = rows[r % len(rows):] + rows[:r % len(rows)]
            for row in order:
                if row in skipped:  # --keep-going: a row that failed once is not tried again
                    continue
                try:
                    runs[row].append(measure(args, pair, row))
                except SystemExit as err:
                    if not args.keep_going:
                        raise
                    skipped[row] = f"failed: {err}"
                    print(skipped[row], flush=True)
                    continue
                print(f"{pair} round {r + 1}: {row} {runs[row][-1]['samples_per_s']:,.0f} samples/s", flush=True)
            roofline.append(measure(args, pair, "roofline"))
        runs = {row: rs for row, rs in runs.items() if rs}
        notes = {"torchdistill": TORCHDISTILL_NOTE} if "torchdistill" in rows else {}
        result["pairs"][pair] = {**summarise(pair, runs, roofline), "skipped": skipped, "notes": notes}
    name = Path(args.name)
    out = name if name.parent != Path(".") else HERE / "results" / name
    out.parent.mkdir(parents=True, exist_ok=True)
    # the suffix appended, not swapped: a dot in --name stays (as _common.result_file, which this
    # stdlib-only script does not import)
    Path(f"{out}.json").write_text(json.dumps(result, indent=2) + "\n")
    Path(f"{out}.md").write_text(markdown(result) + "\n")
    print(f"wrote {out}.json and .md")


if __name__ == "__main__":
    main()
