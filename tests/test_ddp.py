"""DDP under torchrun: 2 gloo processes on CPU give the weights of a 1-process run with the same
global batch, rank 0 alone writes the run directory, --resume works, user errors stop every rank."""
import json
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import mmdistill
from conftest import run_cli, write
from mmdistill.distill.distributed import ShardSampler
from mmdistill.distill.engine import Trainer
from mmdistill.errors import Interrupted

SRC = Path(mmdistill.__file__).resolve().parents[1]

# MLP encoders: no BatchNorm, no dropout (see mmdistill.distill.distributed for when runs differ).
# 203 samples, val 0.2 -> 163 training samples; batch 18 leaves a last global batch of 1 sample,
# so rank 1 has none in it (the weight-0 step); batch 16 leaves 3 (2 + 1: uneven shards).
BASE = {
    "seed": 0, "device": "cpu",
    "data": {"name": "synthetic", "train_size": 203, "test_size": 20},
    "model": {"encoders": {"image": {"type": "mlp", "hidden": [16]}, "audio": {"type": "mlp", "hidden": [16]}}},
    "train": {"epochs": 3, "batch_size": 16, "progress": False, "val_fraction": 0.2,
              "optimizer": {"name": "sgd", "lr": 0.05, "momentum": 0.9}, "scheduler": {"name": "cosine"}},
}


def config(**train) -> dict:
    cfg = json.loads(json.dumps(BASE))
    cfg["train"].update(train)
    return cfg


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def torchrun(*args, nproc: int = 2, script: Path | None = None):
    """``torchrun --nproc_per_node=nproc -m mmdistill ARGS`` (or ``script ARGS``; a fresh rendezvous
    port each time)."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(SRC), os.environ.get("PYTHONPATH", "")]),
           "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "MMDISTILL_DIST_TIMEOUT": "60"}
    command = [sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={nproc}",
               "--master_addr=127.0.0.1", f"--master_port={free_port()}",
               *([str(script)] if script else ["-m", "mmdistill"]), *map(str, args)]
    return subprocess.run(command, env=env, capture_output=True, text=True, timeout=180)


def weights(path: Path) -> dict:
    return torch.load(path, map_location="cpu", weights_only=True)["state_dict"]


def assert_same_weights(a: Path, b: Path, tol: float = 1e-5) -> None:
    wa, wb = weights(a), weights(b)
    assert wa.keys() == wb.keys()
    worst = max(float((wa[k].double() - wb[k].double()).abs().max()) for k in wa if wa[k].numel())
    assert worst <= tol, f"largest weight difference {worst:.3g}"


def records(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def test_shard_sampler_splits_the_one_process_batches():
    """Per step, the ranks' batches together are the 1-process batch; no sample twice, none lost."""
    dataset = list(range(37))
    seed, batch = 3, 8
    shards = [ShardSampler(dataset, batch, seed=seed, num_replicas=2, rank=r) for r in range(2)]
    for epoch in (0, 1, 2, 1):  # set_epoch going back replays the stream from the seed
        fresh = torch.utils.data.RandomSampler(dataset, generator=torch.Generator().manual_seed(seed))
        for _ in range(epoch):
            list(fresh)
        order = list(fresh)  # what a 1-process run's RandomSampler yields in this epoch
        per_rank = []
        for s in shards:
            s.set_epoch(epoch)
            items = list(s)
            assert len(items) == len(s)
            per_rank.append([items[i:i + 4] for i in range(0, len(items), 4)])
        assert len(per_rank[0]) == len(per_rank[1]) == 5
        for k in range(5):
            real = per_rank[0][k] + ([] if shards[1].empty(k) else per_rank[1][k])
            assert sorted(real) == sorted(order[k * batch:(k + 1) * batch])
    # 37 = 4 * 8 + 5: the last global batch has 5 samples, 3 on rank 0 and 2 on rank 1
    assert [s.count(4) for s in shards] == [3, 2]
    assert [s.loss_scale(4) for s in shards] == [3 * 2 / 5, 2 * 2 / 5]
    # 33 = 4 * 8 + 1: rank 1 gets one sample with weight 0 in the last step
    small = [ShardSampler(list(range(33)), 8, seed=0, num_replicas=2, rank=r) for r in range(2)]
    assert [s.empty(4) for s in small] == [False, True] and small[1].loss_scale(4) == 0
    assert len(small[0]) == len(small[1]) == 17


def test_global_batch_must_divide(tmp_path):
    with pytest.raises(mmdistill.errors.ConfigError, match="train.batch_size: 9 .* 2 processes"):
        ShardSampler(list(range(20)), 9, seed=0, num_replicas=2, rank=0)


def test_distill_with_teacher_cache_equals_one_process_and_rank0_writes(tmp_path):
    """Distillation (KD + FitNet with an adapter, a BatchNorm teacher, teacher cache, step-wise
    cosine schedule, a last global batch of one sample) under 2 gloo processes: the weights of the 1-process run, rank 0
    alone writes the run directory."""
    teacher = config(epochs=1)  # BatchNorm in the teacher is fine: it stays in eval mode, outside DDP
    teacher["model"]["encoders"] = {m: {"type": "conv", "channels": [4]} for m in ("image", "audio")}
    assert run_cli("train", write(tmp_path, "t.yaml", teacher), "--out", tmp_path / "teacher") == 0
    cfg = config(batch_size=18, scheduler={"name": "cosine", "interval": "step"})
    cfg["model"]["encoders"] = {m: {"type": "mlp", "hidden": [8]} for m in ("image", "audio")}
    cfg["distill"] = {"teacher": {"checkpoint": str(tmp_path / "teacher" / "best.pt")}, "gamma": 0.5,
                      "terms": [{"name": "kd", "temperature": 4.0},
                                {"name": "fitnet", "student": "fusion", "teacher": "fusion"}]}
    path = write(tmp_path, "s.yaml", cfg)
    assert run_cli("distill", path, "--out", tmp_path / "one") == 0
    result = torchrun("distill", path, "--out", tmp_path / "two")
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.count("test metrics") == 1  # rank 0 alone prints
    assert_same_weights(tmp_path / "one" / "best.pt", tmp_path / "two" / "best.pt")
    assert_same_weights(tmp_path / "one" / "last.pt", tmp_path / "two" / "last.pt")
    one, two = records(tmp_path / "one"), records(tmp_path / "two")
    assert len(two) == 3  # one line per epoch: rank 0 alone appends
    for a, b in zip(one, two):  # all-reduced metrics and sharded validation: the 1-process values
        assert a["val_accuracy"] == b["val_accuracy"] and a["train_accuracy"] == b["train_accuracy"]
        for key in ("train_loss", "train_kd", "train_fitnet", "train_ce"):
            assert b[key] == pytest.approx(a[key], rel=1e-5)
    files = sorted(p.name for p in (tmp_path / "two").iterdir())
    assert files == sorted(p.name for p in (tmp_path / "one").iterdir())
    info = json.loads((tmp_path / "two" / "run.json").read_text())
    assert info["status"] == "complete" and not (tmp_path / "two" / "run.lock").exists()


def test_train_resumes_under_torchrun_to_the_one_process_weights(tmp_path, monkeypatch):
    """A run stopped after its first epoch (SIGTERM, in-process here so the stop is not a race),
    continued with --resume by 2 processes: the weights of an uninterrupted 1-process run."""
    path = write(tmp_path, "t.yaml", config(epochs=3))
    assert run_cli("train", path, "--out", tmp_path / "one") == 0
    out = tmp_path / "two"
    save_state = Trainer.save_state

    def stop_after_first_epoch(self, *args):
        save_state(self, *args)
        raise Interrupted(signal.SIGTERM)

    monkeypatch.setattr(Trainer, "save_state", stop_after_first_epoch)
    assert run_cli("train", path, "--out", out) == 143
    monkeypatch.undo()
    assert json.loads((out / "run.json").read_text())["status"] == "interrupted"
    result = torchrun("train", path, "--out", out, "--resume")
    assert result.returncode == 0, result.stderr[-3000:]
    info = json.loads((out / "run.json").read_text())
    assert info["status"] == "complete" and len(info["resumed"]) == 1
    assert [r["epoch"] for r in records(out)] == [1, 2, 3]
    for a, b in zip(records(tmp_path / "one"), records(out)):
        assert b["val_accuracy"] == a["val_accuracy"] and b["train_loss"] == pytest.approx(a["train_loss"], rel=1e-5)
    assert_same_weights(tmp_path / "one" / "last.pt", out / "last.pt")


def test_a_user_error_stops_every_rank_with_one_message(tmp_path):
    """An unusable run directory: every rank stops before training, rank 0 prints the one line."""
    out = tmp_path / "run"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    result = torchrun("train", write(tmp_path, "t.yaml", config()), "--out", out)
    assert result.returncode != 0
    assert result.stderr.count("error:") == 1, result.stderr[-3000:]
    assert f"error: {out}: directory is not empty; pass --overwrite to replace it" in result.stderr
    assert sorted(p.name for p in out.iterdir()) == ["notes.txt"]


FAIL_ON_RANK_1 = """
import os, sys
from mmdistill.distill import tasks
from mmdistill.errors import DataError

step = tasks.SupervisedTask.training_step
calls = [0]


def failing_step(self, *args, **kwargs):
    calls[0] += 1
    if os.environ["RANK"] == "1" and calls[0] == 15:  # in the second epoch, mid-step
        raise DataError("sample 7: broken on rank 1")
    return step(self, *args, **kwargs)


tasks.SupervisedTask.training_step = failing_step
from mmdistill.cli import main
main(sys.argv[1:])
"""


def test_an_error_on_one_rank_mid_training_stops_every_rank(tmp_path):
    """Rank 1 fails during training: it prints its error, rank 0 stops (no hang) saying a peer
    stopped, and the run directory says failed."""
    script = tmp_path / "fail_on_rank_1.py"
    script.write_text(FAIL_ON_RANK_1)
    out = tmp_path / "run"
    result = torchrun("train", write(tmp_path, "t.yaml", config()), "--out", out, script=script)
    assert result.returncode != 0
    assert "error: rank 1: sample 7: broken on rank 1" in result.stderr, result.stderr[-3000:]
    info = json.loads((out / "run.json").read_text())
    assert info["status"] in ("failed", "interrupted")  # rank 0: a peer's closed connection, or torchrun's SIGTERM
    assert not (out / "run.lock").exists() and not (out / "summary.json").exists()


SHARD_REPORT = """
import torch.distributed as dist
from mmdistill.distill import tasks
build = tasks.DistillationTask.cache_view_outputs

def reporting(self, dataset, *args, **kwargs):
    build(self, dataset, *args, **kwargs)
    cache = self._view_cache
    print(f"rank {dist.get_rank()} holds {len(cache.owned)} of {len(dataset)}: {cache.owned.tolist()}", flush=True)

tasks.DistillationTask.cache_view_outputs = reporting
from mmdistill.cli import main
main()
"""


def test_view_cache_under_torchrun_holds_each_ranks_shard_and_equals_online_views(tmp_path):
    """2 gloo processes with train.view_cache: each rank builds and reads only the rows of its own
    samples (i = rank mod 2; a read outside them is an error), and the weights equal online teaching
    on the same views under the same 2 processes."""
    teacher = config(epochs=1)
    assert run_cli("train", write(tmp_path, "t.yaml", teacher), "--out", tmp_path / "teacher") == 0
    paths = {}
    for cache in (True, False):
        cfg = config(batch_size=18, epochs=2, augment={"audio": [{"type": "time_mask", "width": 3}]}, augment_teacher="consistent",
                     modality_dropout={"image": 0.3},
                     view_cache={"views": 3, "dtype": "float32", "storage": "memory", "cache": cache})
        cfg["distill"] = {"teacher": {"checkpoint": str(tmp_path / "teacher" / "best.pt")}, "gamma": 0.5,
                          "terms": [{"name": "kd", "temperature": 4.0}]}
        paths[cache] = write(tmp_path, f"s{int(cache)}.yaml", cfg)
    script = tmp_path / "report.py"
    script.write_text(SHARD_REPORT)
    cached = torchrun("distill", paths[True], "--out", tmp_path / "cached", script=script)
    assert cached.returncode == 0, cached.stderr[-3000:]
    lines = sorted(line for line in cached.stdout.splitlines() if line.startswith("rank "))
    assert len(lines) == 2
    n = int(lines[0].split(" of ")[1].split(":")[0])
    for rank, line in enumerate(lines):
        assert json.loads(line.split(": ", 1)[1]) == list(range(rank, n, 2))
    online = torchrun("distill", paths[False], "--out", tmp_path / "online")
    assert online.returncode == 0, online.stderr[-3000:]
    assert_same_weights(tmp_path / "cached" / "last.pt", tmp_path / "online" / "last.pt")
