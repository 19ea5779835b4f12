"""A campaign of bad inputs and faults, run through the CLI entry point in-process.

Every case must end the same way: exit 2, exactly one line on stderr that names the culprit (key,
file, row or sample), no traceback, nothing created where the run would have gone, and a finished
run directory left byte-identical. Signals run in subprocesses: SIGTERM exits 143, Ctrl-C 130, and
``run.json`` then says ``interrupted``; after SIGKILL the next run reports the run interrupted.
"""
from __future__ import annotations

import contextlib
import errno
import importlib
import io
import json
import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import soundfile
import torch
import yaml
from hypothesis import HealthCheck, given, settings, strategies as st

from mmdistill.cli import main
from mmdistill.errors import Interrupted, RunDirError
from mmdistill.rundir import FORMAT, LOCK, RunDir, read_record

N = 60
REPO = Path(__file__).resolve().parents[1]


# --- helpers ---------------------------------------------------------------------------------------
def make_npz(path: Path, **arrays) -> Path:
    """A 3-class npz dataset: vector ``x`` [N, 6], image ``img`` [N, 1, 8, 8]; ``name=None`` drops an array."""
    rng = np.random.default_rng(0)
    label = np.arange(N) % 3
    base = {"x": (rng.normal(size=(N, 6)) + label[:, None]).astype(np.float32),
            "img": rng.random((N, 1, 8, 8), dtype=np.float32), "label": label}
    base.update(arrays)
    np.savez(path, **{k: v for k, v in base.items() if v is not None})
    return path


def npz_config(path: Path, **train) -> dict:
    return {"seed": 0, "device": "cpu", "data": {"name": "npz", "path": str(path)},
            "model": {"encoders": {"x": {"type": "mlp", "hidden": [8]}, "img": {"type": "conv", "channels": [4]}}},
            "train": {"epochs": 1, "batch_size": 32, "progress": False, "val_fraction": 0.0, **train}}


def write_yaml(path: Path, cfg: dict) -> Path:
    path.write_text(yaml.safe_dump(cfg))
    return path


def cli(*args) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            main([str(a) for a in args])
            code = 0
        except SystemExit as exit_:
            code = exit_.code or 0
    return code, out.getvalue(), err.getvalue()


def snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def write_wav(path: Path, wave: np.ndarray, rate: int = 8000, subtype: str = "FLOAT") -> Path:
    soundfile.write(path, wave, rate, subtype=subtype)
    return path


def tone(digit: int, n: int = 4000) -> np.ndarray:
    t = np.arange(n) / 8000
    return (0.3 * np.sin(2 * np.pi * (300 + 100 * digit) * t)).astype(np.float32)


def dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def record(status: str = "complete") -> str:
    return json.dumps({"format": FORMAT, "version": 1, "status": status, "command": "mmdistill train",
                       "started": 0.0, "config": {}})


# --- the world every case starts from ----------------------------------------------------------------
@pytest.fixture(scope="module")
def world(tmp_path_factory):
    w = tmp_path_factory.mktemp("world")
    data = make_npz(w / "data.npz")
    cfg = write_yaml(w / "cfg.yaml", npz_config(data))
    code, _, err = cli("train", cfg, "--out", w / "finished")
    assert code == 0, err
    shape_data = make_npz(w / "shape.npz")
    code, _, err = cli("train", write_yaml(w / "shape.yaml", npz_config(shape_data)), "--out", w / "shape_run")
    assert code == 0, err
    student = npz_config(data)
    student["model"] = {"encoders": {"x": {"type": "mlp", "hidden": [4]}}}
    student["distill"] = {"teacher": {"checkpoint": str(w / "finished" / "best.pt")}, "terms": [{"name": "kd"}]}
    manifest = w / "m"
    manifest.mkdir()
    rows = ["label,feat,snd"]
    for i in range(12):
        np.save(manifest / f"f{i}.npy", np.full(4, i % 3, dtype=np.float32))
        write_wav(manifest / f"s{i}.wav", tone(i % 3))
        rows.append(f"{i % 3},f{i}.npy,s{i}.wav")
    (manifest / "good.csv").write_text("\n".join(rows) + "\n")
    np.save(w / "outside.npy", np.zeros(4, dtype=np.float32))
    return SimpleNamespace(root=w, data=data, cfg=cfg, finished=w / "finished", ckpt=w / "finished" / "best.pt",
                           student=write_yaml(w / "student.yaml", student), manifest=manifest, rows=rows,
                           shape_data=shape_data, shape_ckpt=w / "shape_run" / "best.pt")


@dataclass
class Case:
    args: list
    culprit: str | tuple[str, ...]
    check: object = None  # a callable run after the CLI, for what the case must leave behind


CASES: dict[str, object] = {}


def case(name):
    def register(fn):
        assert name not in CASES
        CASES[name] = fn
        return fn
    return register


def train_with(w, tmp, cfg: dict, *extra) -> list:
    return ["train", write_yaml(tmp / "c.yaml", cfg), "--out", tmp / "run", *extra]


# --- 1. usage errors ---------------------------------------------------------------------------------
USAGE = {
    "no_out": (lambda w, t: ["train", w.cfg], "--out"),
    "out_without_value": (lambda w, t: ["train", w.cfg, "--out"], "--out"),
    "misspelt_command": (lambda w, t: ["trian"], "trian"),
    "demo_seed_not_int": (lambda w, t: ["demo", "--seed", "abc", "--out", t / "run"], "--seed"),
    "unknown_option": (lambda w, t: ["train", w.cfg, "--out", t / "run", "--bogus"], "--bogus"),
    "evaluate_without_checkpoint": (lambda w, t: ["evaluate"], "checkpoint"),
    "distill_without_config": (lambda w, t: ["distill"], "config"),
    "extra_argument": (lambda w, t: ["losses", "extra"], "extra"),
    "set_without_value": (lambda w, t: ["train", w.cfg, "--out", t / "run", "--set"], "--set"),
    "corrupt_seed_not_int": (lambda w, t: ["evaluate", w.ckpt, "--out", t / "run", "--corrupt-seed", "x"],
                             "--corrupt-seed"),
    "set_without_equals": (lambda w, t: ["train", w.cfg, "--out", t / "run", "--set", "noequals"], "noequals"),
    "device_unknown": (lambda w, t: ["train", w.cfg, "--out", t / "run", "--device", "tpu"], "device"),
    "loss_weight_not_number": (lambda w, t: ["distill", w.student, "--out", t / "run", "--loss", "kd:heavy"],
                               "kd:heavy"),
    "loss_unknown": (lambda w, t: ["distill", w.student, "--out", t / "run", "--loss", "nosuch"], "nosuch"),
    "split_unknown": (lambda w, t: ["evaluate", w.ckpt, "--out", t / "run", "--split", "dev"], "--split dev"),
    "drop_unknown": (lambda w, t: ["evaluate", w.ckpt, "--out", t / "run", "--drop", "video"], "video"),
    "corrupt_kind_unknown": (lambda w, t: ["evaluate", w.ckpt, "--out", t / "run", "--corrupt", "img:blur:3"],
                             "blur"),
    "corrupt_modality_unknown": (lambda w, t: ["evaluate", w.ckpt, "--out", t / "run", "--corrupt",
                                               "video:gaussian_noise:3"], "video"),
    "config_is_a_directory": (lambda w, t: ["train", w.root, "--out", t / "run"], str(Path("world"))),
}
for _name, (_args, _culprit) in USAGE.items():
    case(f"usage/{_name}")(lambda w, t, mp, a=_args, c=_culprit: Case(a(w, t), c))


# --- 2. config keys (--set) ----------------------------------------------------------------------------
SETS = [
    ("train.epochs=true", "train.epochs"), ("train.epochs=0", "train.epochs"), ("train.epochs=-1", "train.epochs"),
    ("train.epochs=1.5", "train.epochs"), ("train.epochs=three", "train.epochs"),
    ("train.batch_size=true", "train.batch_size"), ("train.progress=1", "train.progress"),
    ("train.cache_teacher=maybe", "train.cache_teacher"), ("seed=true", "seed"), ("seed=abc", "seed"),
    ("train.optimizer.name=rmsprop", "train.optimizer.name"), ("train.optimizer.lr=0", "train.optimizer.lr"),
    ("train.optimizer.nesterov=2", "train.optimizer.nesterov"), ("train.scheduler.name=linear", "train.scheduler.name"),
    ("train.scheduler.warmup_epochs=true", "train.scheduler.warmup_epochs"),
    ("train.val_fraction=1", "train.val_fraction"), ("train.mixup=-1", "train.mixup"),
    ("train.epoch=3", "train.epoch"), ("train.modality_dropout.nosuch=0.5", "train.modality_dropout.nosuch"),
    ("train.time_shift.img=0.1", "train.time_shift.img"), ("train.time_shift.x=0.1", "train.time_shift.x"),
    ("train.time_shift.nosuch=0.1", "train.time_shift.nosuch"), ("train.time_shift.img=2", "train.time_shift.img"),
    ("model.encoders.x.type=rnn", "model.encoders.x"), ("model.encoders.x.hidden=[0]", "model.encoders.x.hidden"),
    ("model.encoders.nosuch={type: mlp}", "nosuch"), ("model.modalities=[nosuch]", "nosuch"),
    ("model.fusion.type=sum", "model.fusion"), ("model.head.dropout=1", "model.head.dropout"),
    ("model.encoders.img.channels=[4, 0]", "model.encoders.img.channels"),
    ("data.name=cifar", "cifar"), ("data.path=missing.npz", "missing.npz"), ("data.test_fraction=0", "data.test_fraction"),
    ("data.bogus=1", "data.bogus"), ("data.modalities=[nosuch]", "nosuch"), ("data.kinds={x: video}", "data.kinds"),
    ("device=tpu", "device"), ("unknownsection.x=1", "unknownsection"), ("train.epochs.x=1", "train.epochs"),
    ("model.encoders.img.channels.5=3", "model.encoders.img.channels.5"),
    ("data.[bold]x=1", "data.[bold]x"), ("train.:smile:=1", "train.:smile:"),
    ("data.path=/nonexistent/[red]dir/d.npz", "[red]dir/d.npz"),
]
for _set, _culprit in SETS:
    case(f"set/{_set}")(lambda w, t, mp, s=_set, c=_culprit: Case(["train", w.cfg, "--out", t / "run", "--set", s], c))


# --- 3. config files -----------------------------------------------------------------------------------
@case("file/missing")
def _(w, t, mp):
    return Case(["train", t / "c[red]:smile:.yaml", "--out", t / "run"], "c[red]:smile:.yaml: no such config file")


@case("file/yaml_syntax")
def _(w, t, mp):
    (t / "bad.yaml").write_text("data: {name: npz\nmodel: [")
    return Case(["train", t / "bad.yaml", "--out", t / "run"], ("bad.yaml", "invalid YAML"))


@case("file/top_level_list")
def _(w, t, mp):
    (t / "list.yaml").write_text("- 1\n- 2\n")
    return Case(["train", t / "list.yaml", "--out", t / "run"], "list.yaml")


@case("file/empty")
def _(w, t, mp):
    (t / "empty.yaml").write_text("")
    return Case(["train", t / "empty.yaml", "--out", t / "run"], "empty.yaml")


@case("file/python_tag")
def _(w, t, mp):
    (t / "tag.yaml").write_text("data: !!python/object/apply:os.system ['echo owned']\n")
    return Case(["train", t / "tag.yaml", "--out", t / "run"], "tag.yaml")


@case("file/missing_model")
def _(w, t, mp):
    cfg = npz_config(w.data)
    del cfg["model"]
    return Case(train_with(w, t, cfg), "model")


@case("file/distill_section_missing")
def _(w, t, mp):
    return Case(["distill", w.cfg, "--out", t / "run"], "distill")


# --- 4. npz data ---------------------------------------------------------------------------------------
def npz_case(name, culprit, **arrays):
    @case(f"npz/{name}")
    def _(w, t, mp):
        return Case(train_with(w, t, npz_config(make_npz(t / f"{name}.npz", **arrays))), (f"{name}.npz", *culprit))


big = np.arange(N) % 3
big[17] = 10**9
npz_case("label_1e9", ("sample 17", "1000000000"), label=big)
npz_case("label_1e9_float", ("sample 5",), label=np.where(np.arange(N) == 5, 1e9, np.arange(N) % 3))
npz_case("label_negative", ("sample 4", "-2"), label=np.where(np.arange(N) == 4, -2, np.arange(N) % 3))
npz_case("label_fraction", ("sample 2",), label=np.where(np.arange(N) == 2, 1.5, np.arange(N) % 3))
npz_case("label_nan", ("sample 9",), label=np.where(np.arange(N) == 9, np.nan, np.arange(N) % 3))
npz_case("label_2d", ("'label'",), label=(np.arange(N) % 3).reshape(N // 2, 2))
npz_case("label_missing", ("no 'label'",), label=None)
# an empty label is an unlabelled sample, which a split file may not put in test
npz_case("label_empty_string_in_test", ("sample 3", "unlabelled"),
         label=np.array(["a", "b", "c", ""] + ["a", "b", "c"] * ((N - 4) // 3) + ["a"] * ((N - 4) % 3)),
         split=np.array(["test"] * 4 + ["train"] * (N - 4)))
npz_case("one_class", ("at least 2 classes",), label=np.zeros(N, dtype=np.int64))
npz_case("modality_wrong_length", ("'x'", "59 samples"), x=np.zeros((N - 1, 6), dtype=np.float32))
npz_case("modality_nan", ("'x'", "sample 7"), x=np.where(np.arange(N)[:, None] == 7, np.nan, np.ones((N, 6))))
npz_case("modality_inf", ("'img'", "sample 11"),
         img=np.where(np.arange(N)[:, None, None, None] == 11, np.inf, np.zeros((N, 1, 8, 8))))
npz_case("modality_strings", ("'x'", "dtype"), x=np.array(["a"] * N))
npz_case("modality_scalar", ("'x'", "scalar"), x=np.float32(3))
npz_case("object_array", ("'x'", "pickle"), x=np.array([object()] * N, dtype=object))
npz_case("split_unknown_value", ("'split'", "sample 0", "valid"), split=np.array(["valid"] + ["train"] * (N - 1)))
npz_case("split_no_test", ("'split'", "'test'"), split=np.array(["train"] * N))
npz_case("split_wrong_length", ("'split'",), split=np.array(["train", "test"]))
npz_case("present_not_bool", ("present_x",), present_x=np.full(N, 3))
npz_case("present_unknown_modality", ("present_video",), present_video=np.ones(N, dtype=bool))
npz_case("reserved_name", ("'index'", "reserved"), index=np.zeros((N, 2), dtype=np.float32))
npz_case("no_modality", ("no modality",), x=None, img=None)


@case("npz/not_a_zip")
def _(w, t, mp):
    (t / "junk.npz").write_bytes(b"not a zip archive at all" * 10)
    return Case(train_with(w, t, npz_config(t / "junk.npz")), ("junk.npz", "not a valid .npz"))


@case("npz/truncated")
def _(w, t, mp):
    raw = w.data.read_bytes()
    (t / "cut.npz").write_bytes(raw[: len(raw) // 2])
    return Case(train_with(w, t, npz_config(t / "cut.npz")), "cut.npz")


@case("npz/single_npy")
def _(w, t, mp):
    with open(t / "one.npz", "wb") as f:
        np.save(f, np.zeros(3))
    return Case(train_with(w, t, npz_config(t / "one.npz")), ("one.npz", "single array"))


@case("npz/in_[bold]_folder")
def _(w, t, mp):
    (t / "[bold]x").mkdir()
    path = make_npz(t / "[bold]x" / ":smile:.npz", label=np.zeros(N, dtype=np.int64))
    return Case(train_with(w, t, npz_config(path)), "[bold]x/:smile:.npz")


# --- 5. manifests ----------------------------------------------------------------------------------------
def manifest_config(path: Path) -> dict:
    cfg = npz_config(path)
    cfg["data"] = {"name": "manifest", "path": str(path), "audio": {"sample_rate": 8000}}
    cfg["model"] = {"encoders": {"feat": {"type": "mlp", "hidden": [4]}, "snd": {"type": "conv", "channels": [4]}}}
    return cfg


def manifest_case(name, culprit, rows=None, text=None, suffix="csv", files=()):
    @case(f"manifest/{name}")
    def _(w, t, mp):
        for fname, writer in files:
            writer(w.manifest / fname)
        path = w.manifest / f"{name}.{suffix}"
        path.write_text(text if text is not None else "\n".join(rows(list(w.rows))) + "\n")
        return Case(train_with(w, t, manifest_config(path)), (f"{name}.{suffix}", *culprit))


def _row(i, new):
    def edit(rows):
        rows[i] = new
        return rows
    return edit


manifest_case("missing_file", ("row 4", "gone.npy"), rows=_row(3, "2,gone.npy,s2.wav"))
manifest_case("dotdot_escape", ("row 6", "../outside.npy", "leads out"), rows=_row(5, "1,../outside.npy,s4.wav"))
manifest_case("truncated_wav", ("row 3", "cut.wav", "cut short"), rows=_row(2, "1,f1.npy,cut.wav"),
              files=[("cut.wav", lambda p: p.write_bytes(write_wav(p, tone(1)).read_bytes()[:3000]))])
manifest_case("nan_wav", ("row 5", "nan.wav", "NaN"), rows=_row(4, "0,f3.npy,nan.wav"),
              files=[("nan.wav", lambda p: write_wav(p, np.where(np.arange(4000) == 100, np.nan, tone(0))))])
manifest_case("undecodable_wav", ("row 2", "noise.wav", "cannot decode"), rows=_row(1, "0,f0.npy,noise.wav"),
              files=[("noise.wav", lambda p: p.write_bytes(b"RIFF....WAVEjunk" * 4))])
manifest_case("nan_npy", ("row 7", "nan.npy", "NaN"), rows=_row(6, "2,nan.npy,s5.wav"),
              files=[("nan.npy", lambda p: np.save(p, np.array([0, np.nan, 0, 0], dtype=np.float32)))])
manifest_case("npy_shape", ("row 8", "wide.npy", "shape"), rows=_row(7, "0,wide.npy,s6.wav"),
              files=[("wide.npy", lambda p: np.save(p, np.zeros(7, dtype=np.float32)))])
manifest_case("unknown_suffix", ("row 2", "notes.txt"), rows=_row(1, "0,notes.txt,s0.wav"))
manifest_case("ragged_row", ("row 3", "columns"), rows=_row(2, "1,f1.npy"))
manifest_case("no_label_column", ("'label'",), rows=lambda r: ["lab,feat,snd", *r[1:]])
manifest_case("split_bad_value", ("row 2", "later"), rows=lambda r: [r[0] + ",split"] + [
    x + (",later" if i == 0 else ",test" if i % 4 == 0 else ",train") for i, x in enumerate(r[1:])])
manifest_case("empty", ("no samples",), text="label,feat,snd\n")
manifest_case("one_class", ("at least 2 classes",), rows=lambda r: [r[0]] + ["0" + x[1:] for x in r[1:]])
manifest_case("jsonl_malformed", ("line 2", "invalid JSON"), suffix="jsonl",
              text='{"label": 0, "feat": "f0.npy", "snd": "s0.wav"}\n{"label": 1, "feat": \n')
manifest_case("label_huge", ("row 3", "1000000000"), rows=_row(2, "1000000000,f1.npy,s1.wav"))


# --- 6. FSDD recordings ----------------------------------------------------------------------------------
def fsdd_case(name, culprit, bad_name, writer):
    @case(f"fsdd/{name}")
    def _(w, t, mp):
        folder = t / "root" / "fsdd" / "recordings"
        folder.mkdir(parents=True)
        for digit in (0, 1):
            for index in range(6):
                write_wav(folder / f"{digit}_a_{index}.wav", tone(digit), subtype="PCM_16")
        writer(folder / bad_name)
        cfg = npz_config(w.data)
        cfg["data"] = {"name": "fsdd", "root": str(t / "root")}
        cfg["model"] = {"encoders": {"audio": {"type": "conv", "channels": [4]}}}
        return Case(train_with(w, t, cfg), (bad_name, *culprit))


fsdd_case("nan_sample", ("NaN",), "1_a_3.wav",
          lambda p: write_wav(p, np.where(np.arange(4000) == 50, np.nan, tone(1))))
fsdd_case("cut_short", ("cut short",), "0_a_2.wav",
          lambda p: p.write_bytes(write_wav(p, tone(0), subtype="PCM_16").read_bytes()[:2000]))
fsdd_case("wrong_rate", ("16000 Hz",), "1_a_1.wav", lambda p: write_wav(p, tone(1), rate=16000))
fsdd_case("bad_name", ("{digit}_{speaker}_{index}",), "hello.wav", lambda p: write_wav(p, tone(1)))
fsdd_case("not_audio", ("cannot decode",), "0_a_4.wav", lambda p: p.write_bytes(b"\x00" * 100))


# --- 7. checkpoints and teachers ----------------------------------------------------------------------------
def evaluate(w, t, ckpt):
    return ["evaluate", ckpt, "--out", t / "run"]


def tampered(w, t, name, edit) -> Path:
    payload = torch.load(w.ckpt, weights_only=True)
    edit(payload)
    torch.save(payload, t / name)
    return t / name


CHECKPOINTS = {
    "missing": (lambda w, t: t / "nope.pt", "nope.pt: no such checkpoint"),
    "text_file": (lambda w, t: (t / "t.pt").write_text("hello") and t / "t.pt", ("t.pt", "not a PyTorch checkpoint")),
    "not_mmdistill": (lambda w, t: torch.save({"a": torch.zeros(1)}, t / "o.pt") or t / "o.pt", ("o.pt", "not an mmdistill")),
    "pickled_object": (lambda w, t: torch.save({"f": SimpleNamespace()}, t / "p.pt") or t / "p.pt",
                       ("p.pt", "objects other than tensors")),
    "no_specs": (lambda w, t: tampered(w, t, "s.pt", lambda p: p.pop("specs")), ("s.pt", "no 'specs'")),
    "bad_specs": (lambda w, t: tampered(w, t, "b.pt", lambda p: p.update(specs={"x": 3})), ("b.pt", "'specs'")),
    "no_state_dict": (lambda w, t: tampered(w, t, "d.pt", lambda p: p.pop("state_dict")), ("d.pt", "'state_dict'")),
    "bad_model_config": (lambda w, t: tampered(w, t, "m.pt", lambda p: p["model_config"].update(fusion={"type": "sum"})),
                         ("m.pt", "fusion")),
    "wrong_weights": (lambda w, t: tampered(w, t, "w.pt", lambda p: p.update(num_classes=5)), ("w.pt", "weights")),
    "no_meta_data": (lambda w, t: tampered(w, t, "n.pt", lambda p: p.update(meta={})), ("n.pt", "meta.data")),
}
for _name, (_make, _culprit) in CHECKPOINTS.items():
    case(f"checkpoint/{_name}")(lambda w, t, mp, m=_make, c=_culprit: Case(evaluate(w, t, m(w, t)), c))


@case("checkpoint/data_shape_changed")
def _(w, t, mp):
    make_npz(w.shape_data, img=np.zeros((N, 1, 10, 10), dtype=np.float32))
    return Case(evaluate(w, t, w.shape_ckpt), ("shape_run/best.pt", "'img'", "[1, 8, 8]", "[1, 10, 10]"))


@case("checkpoint/data_classes_changed")
def _(w, t, mp):
    make_npz(w.shape_data, label=np.arange(N) % 4)
    return Case(evaluate(w, t, w.shape_ckpt), ("3 classes", "4"))


def distill_with(w, t, data_arrays=None, **student):
    cfg = yaml.safe_load(w.student.read_text())
    if data_arrays is not None:
        cfg["data"]["path"] = str(make_npz(t / "d.npz", **data_arrays))
    cfg.update(student)
    return ["distill", write_yaml(t / "s.yaml", cfg), "--out", t / "run"]


TEACHERS = {
    "classes_differ": ({"label": np.arange(N) % 4}, {}, ("distill.teacher.checkpoint", "3 classes", "4")),
    "shape_differs": ({"img": np.zeros((N, 1, 10, 10), dtype=np.float32)}, {}, ("distill.teacher.checkpoint", "'img'")),
    "modality_missing": ({"img": None}, {}, ("distill.teacher.checkpoint", "'img'")),
    "student_modality_missing": (None, {"model": {"encoders": {"y": {"type": "mlp"}}}}, ("model.encoders.y",)),
}
for _name, (_arrays, _student, _culprit) in TEACHERS.items():
    case(f"teacher/{_name}")(lambda w, t, mp, a=_arrays, s=_student, c=_culprit: Case(distill_with(w, t, a, **s), c))


@case("teacher/missing_checkpoint")
def _(w, t, mp):
    cfg = yaml.safe_load(w.student.read_text())
    cfg["distill"]["teacher"]["checkpoint"] = str(t / "gone.pt")
    return Case(["distill", write_yaml(t / "s.yaml", cfg), "--out", t / "run"], ("distill.teacher.checkpoint", "gone.pt"))


@case("teacher/not_a_checkpoint")
def _(w, t, mp):
    cfg = yaml.safe_load(w.student.read_text())
    cfg["distill"]["teacher"]["checkpoint"] = str(w.cfg)
    return Case(["distill", write_yaml(t / "s.yaml", cfg), "--out", t / "run"],
                ("distill.teacher.checkpoint", "cfg.yaml", "not a PyTorch checkpoint"))


# --- 8. run directories --------------------------------------------------------------------------------------
def unchanged(folder: Path, before: dict):
    def check(w, t):
        assert snapshot(folder) == before
    return check


def foreign(t: Path, files: dict[str, str], culprit, *extra) -> Case:
    out = t / "out"
    out.mkdir()
    for name, text in files.items():
        (out / name).parent.mkdir(parents=True, exist_ok=True)
        (out / name).write_text(text)
    return Case(["train", "CFG", "--out", out, *extra], culprit, unchanged(out, snapshot(out)))


RUNDIRS = {
    "finished_without_overwrite": lambda w, t: Case(["train", w.cfg, "--out", w.finished], ("finished", "--overwrite")),
    "overwrite_folder_with_runjson_and_code": lambda w, t: foreign(
        t, {"run.json": '{"status": "complete"}', "src/main.py": "print('mine')\n"}, ("out", "not an mmdistill run"),
        "--overwrite"),
    "overwrite_folder_without_runjson": lambda w, t: foreign(t, {"notes.txt": "mine"}, ("out", "not an mmdistill run"),
                                                             "--overwrite"),
    "overwrite_runjson_not_json": lambda w, t: foreign(t, {"run.json": "garbage"}, ("out", "not an mmdistill run"),
                                                       "--overwrite"),
    "overwrite_other_format": lambda w, t: foreign(t, {"run.json": '{"format": "other", "version": 1}'},
                                                   ("out", "not an mmdistill run"), "--overwrite"),
    "folder_not_empty": lambda w, t: foreign(t, {"notes.txt": "mine"}, ("out", "--overwrite")),
    "live_lock_overwrite": lambda w, t: foreign(
        t, {"run.json": record("running"), LOCK: json.dumps({"pid": os.getpid(), "host": socket.gethostname()})},
        ("out", f"pid {os.getpid()}"), "--overwrite"),
    "live_lock": lambda w, t: foreign(
        t, {"run.json": record("running"), LOCK: json.dumps({"pid": os.getpid(), "host": socket.gethostname()})},
        ("out", "is writing into this directory")),
    "lock_on_another_host": lambda w, t: foreign(
        t, {"run.json": record("running"), LOCK: json.dumps({"pid": 1, "host": "elsewhere.example"})},
        ("out", "elsewhere.example"), "--overwrite"),
    "out_is_a_file": lambda w, t: (t / "out").write_text("x") and Case(["train", "CFG", "--out", t / "out"],
                                                                          ("out", "not a directory")),
    "out_under_a_file": lambda w, t: (t / "f").write_text("x") and Case(["train", "CFG", "--out", t / "f" / "run"],
                                                                         ("f", "not a directory")),
    # the finished run holds the checkpoint / teacher these read: that is refused first (tests/test_trust.py)
    "evaluate_into_finished": lambda w, t: Case(["evaluate", w.ckpt, "--out", w.finished], ("finished", "contains the")),
    "distill_into_finished": lambda w, t: Case(["distill", w.student, "--out", w.finished], ("finished", "contains the")),
    "demo_into_finished": lambda w, t: Case(["demo", "--out", w.finished, "--device", "cpu"], ("finished", "--overwrite")),
}
for _name, _make in RUNDIRS.items():
    def _rundir(w, t, mp, make=_make):
        c = make(w, t)
        c.args = [w.cfg if a == "CFG" else a for a in c.args]
        return c
    case(f"rundir/{_name}")(_rundir)


@case("rundir/stale_lock_reported_interrupted")
def _(w, t, mp):
    out = t / "out"
    out.mkdir()
    (out / "run.json").write_text(record("running"))
    (out / "last.pt").write_bytes(b"weights")
    (out / LOCK).write_text(json.dumps({"pid": dead_pid(), "host": socket.gethostname()}))

    def check(w, t):
        assert read_record(out)["status"] == "interrupted"
        assert not (out / LOCK).exists() and (out / "last.pt").read_bytes() == b"weights"
    return Case(["train", w.cfg, "--out", out], ("out", "interrupted run", "--overwrite"), check)


@case("rundir/read_only_file_system")
def _(w, t, mp):
    real = os.statvfs
    mp.setattr(os, "statvfs", lambda p: SimpleNamespace(f_flag=real(p).f_flag | os.ST_RDONLY))
    return Case(["train", w.cfg, "--out", t / "run"], ("run", "read-only"))


@case("rundir/not_writable")
def _(w, t, mp):
    real = os.access
    mp.setattr(os, "access", lambda p, mode, **k: False if mode & os.W_OK else real(p, mode, **k))
    return Case(["train", w.cfg, "--out", t / "run"], ("run", "not writable"))


def _failed_run(out: Path, culprit_in_error: str):
    def check(w, t):
        rec = read_record(out)
        assert rec["status"] == "failed" and culprit_in_error in rec["error"]
        assert not list(out.rglob("*.part")) and not (out / LOCK).exists()
        assert not (out / "summary.json").exists()
    return check


@case("disk/full_writing_a_checkpoint")
def _(w, t, mp):
    real = torch.save

    def full(obj, f, *a, **k):
        name = str(getattr(f, "name", f))  # checkpoints are written through a file object
        if name.endswith(".part") and "last.pt" in name:
            f.write(b"half a checkpoint")
            raise OSError(errno.ENOSPC, "No space left on device", name)
        return real(obj, f, *a, **k)
    mp.setattr(torch, "save", full)
    return Case(["train", w.cfg, "--out", t / "run"], ("last.pt", "ENOSPC", "failed"), _failed_run(t / "run", "space"))


@case("disk/read_only_writing_metrics")
def _(w, t, mp):
    real = os.replace

    def read_only(src, dst, *a, **k):
        if str(dst).endswith("metrics.json"):
            raise OSError(errno.EROFS, "Read-only file system", str(dst))
        return real(src, dst, *a, **k)
    mp.setattr(os, "replace", read_only)
    return Case(["train", w.cfg, "--out", t / "run"], ("metrics.json", "EROFS"), _failed_run(t / "run", "Read-only"))


@case("disk/full_writing_run_json")
def _(w, t, mp):
    real = os.replace

    def full(src, dst, *a, **k):
        if str(dst).endswith("run.json"):
            raise OSError(errno.ENOSPC, "No space left on device", str(dst))
        return real(src, dst, *a, **k)
    mp.setattr(os, "replace", full)
    return Case(["train", w.cfg, "--out", t / "run"], ("run.json", "ENOSPC", "not started"))


@case("disk/full_writing_metrics_jsonl")
def _(w, t, mp):
    import builtins
    real = builtins.open

    def full(file, mode="r", *a, **k):
        if str(file).endswith("metrics.jsonl") and "a" in mode:
            raise OSError(errno.ENOSPC, "No space left on device", str(file))
        return real(file, mode, *a, **k)
    mp.setattr(builtins, "open", full)
    return Case(["train", w.cfg, "--out", t / "run"], ("metrics.jsonl", "ENOSPC"), _failed_run(t / "run", "space"))


@case("disk/data_root_unreadable")
def _(w, t, mp):
    def denied(self, pattern):
        raise PermissionError(errno.EACCES, "Permission denied", str(self))
    mp.setattr(Path, "glob", denied)
    (t / "root" / "fsdd" / "recordings").mkdir(parents=True)
    cfg = npz_config(w.data)
    cfg["data"] = {"name": "fsdd", "root": str(t / "root")}
    cfg["model"] = {"encoders": {"audio": {"type": "conv", "channels": [4]}}}
    return Case(train_with(w, t, cfg), ("recordings", "Permission denied"))


# --- 9. every numeric option: finite, in range (whole classes, by key) -------------------------------------------------
# a float option takes no NaN or infinity (YAML .nan, .inf, 1e400) whatever its bounds; the error names
# the key, never "training diverged"
FLOAT_KEYS = ["train.optimizer.lr", "train.optimizer.weight_decay", "train.optimizer.momentum", "train.scheduler.gamma",
              "train.grad_clip", "train.mixup", "train.val_fraction", "train.modality_dropout.x", "train.time_shift.x",
              "model.head.dropout", "model.encoders.x.dropout", "data.test_fraction", "data.label_fraction"]
for _key in FLOAT_KEYS:
    for _value in (".inf", ".nan", "1e400", "-.inf"):
        case(f"finite/{_key}={_value}")(lambda w, t, mp, k=_key, v=_value: Case(
            ["train", w.cfg, "--out", t / "run", "--set", f"{k}={v}"], k))
# counts are bounded (2**70 would overflow inside torch or numpy), seeds are 0..2**32-1
COUNT_KEYS = ["train.epochs", "train.batch_size", "train.eval_batch_size", "train.scheduler.step_size",
              "model.fusion.dim", "model.encoders.x.hidden[0]"]
for _key in COUNT_KEYS:
    _set = _key.replace("[0]", "=[1180591620717411303424]") if "[0]" in _key else f"{_key}=1180591620717411303424"
    if _key == "model.fusion.dim":
        _set = "model.fusion={type: attention, dim: 1180591620717411303424}"
    case(f"count/{_key}=2**70")(lambda w, t, mp, s=_set, k=_key: Case(["train", w.cfg, "--out", t / "run", "--set", s], k))
for _seed in ("-1", "4294967296", "1180591620717411303424", "1.5", "'7'"):
    case(f"count/seed={_seed}")(lambda w, t, mp, s=_seed: Case(["train", w.cfg, "--out", t / "run", "--set", f"seed={s}"],
                                                              "seed"))
RANGES = {
    "modality_dropout_1": ("train.modality_dropout={x: 1.0}", "train.modality_dropout.x"),
    "translate_beyond_image": ("train.augment={img: [{type: translate, pixels: 100}]}", "train.augment.img[0].pixels"),
    "translate_image_size": ("train.augment={img: [{type: translate, pixels: 8}]}", "train.augment.img[0].pixels"),
    "val_fraction_leaves_no_training": ("train.val_fraction=0.99", "val_fraction"),
    "conv_on_a_vector": ("model.encoders.x={type: conv, channels: [4]}", ("model.encoders.x", "[6]", "type: mlp")),
    "conv_deeper_than_the_image": ("model.encoders.img={type: conv, channels: [4, 4, 4, 4, 4]}",
                                   ("model.encoders.img", "too small")),
    "model_beyond_memory": ("model.encoders.img.channels=[2000000000]", ("model.encoders.img", "GB", "memory")),
}
for _name, (_set, _culprit) in RANGES.items():
    case(f"range/{_name}")(lambda w, t, mp, s=_set, c=_culprit: Case(["train", w.cfg, "--out", t / "run", "--set", s], c))
LOSSES = {"kd:-1": "kd:-1", "kd:nan": "kd:nan", "kd:inf": "kd:inf", "kd:1e400": "kd:1e400", ":1": "--loss :1"}
for _spec, _culprit in LOSSES.items():
    case(f"range/--loss {_spec}")(lambda w, t, mp, s=_spec, c=_culprit: Case(
        ["distill", w.student, "--out", t / "run", "--loss", s], c))
DISTILL_KEYS = {
    "weight=-1": ("distill.terms=[{name: kd, weight: -1}]", "distill.terms[0].weight"),
    "weight=.nan": ("distill.terms=[{name: kd, weight: .nan}]", "distill.terms[0].weight"),
    "temperature=.inf": ("distill.terms=[{name: kd, temperature: .inf}]", "temperature"),
    # a temperature every logit is divided by: one that overflows them is refused, not "diverged"
    "temperature=1e-300": ("distill.terms=[{name: kd, temperature: 1.0e-300}]", ("distill.terms[0]", "temperature")),
    "dkd temperature=1e9": ("distill.terms=[{name: dkd, temperature: 1.0e9}]", ("distill.terms[0]", "temperature")),
    "dist temperature=0": ("distill.terms=[{name: dist, temperature: 0}]", ("distill.terms[0]", "temperature")),
    "gamma=.inf": ("distill.gamma=.inf", "distill.gamma"),
    "gamma_0_no_terms": ("distill={teacher: {checkpoint: T}, gamma: 0, terms: []}", "distill.gamma"),
    "gamma_0_zero_weights": ("distill={teacher: {checkpoint: T}, gamma: 0, terms: [{name: kd, weight: 0}]}",
                             "distill.gamma"),
}
for _name, (_set, _culprit) in DISTILL_KEYS.items():
    case(f"range/distill.{_name}")(lambda w, t, mp, s=_set, c=_culprit: Case(
        ["distill", w.student, "--out", t / "run", "--set", s.replace("checkpoint: T", f"checkpoint: '{w.ckpt}'")], c))


def _failed_in_setup(w, t):
    """A loss whose heads or banks the machine cannot hold fails in the run's setup (they are sized by
    the first batch): the run directory records the failure, nothing else."""
    import json as _json

    assert _json.loads((t / "run" / "run.json").read_text())["status"] == "failed"
    assert not (t / "run" / "best.pt").exists()


for _name, _terms in {"crd feat_dim beyond memory": "[{name: crd, feat_dim: 1000000000, negatives: uniform}]"}.items():
    case(f"range/distill.{_name}")(lambda w, t, mp, s=_terms: Case(
        ["distill", w.student, "--out", t / "run", "--set", f"distill.terms={s}"],
        ("distill.terms[0]", "crd", "memory"), check=_failed_in_setup))
OPTIONS = {
    "profile --repeats 0": (lambda w, t: ["profile", w.ckpt, "--out", t / "run", "--repeats", "0"], "--repeats"),
    "profile --threads 0": (lambda w, t: ["profile", w.ckpt, "--out", t / "run", "--threads", "0"], "--threads"),
    "profile --threads -1": (lambda w, t: ["profile", w.ckpt, "--out", t / "run", "--threads", "-1"], "--threads"),
    "evaluate --corrupt-seed -1": (lambda w, t: ["evaluate", w.ckpt, "--out", t / "run", "--corrupt-seed", "-1"],
                                   "--corrupt-seed"),
    "evaluate --corrupt-seed 2**70": (lambda w, t: ["evaluate", w.ckpt, "--out", t / "run", "--corrupt-seed",
                                                    str(2**70)], "--corrupt-seed"),
    "evaluate --drop every modality": (lambda w, t: ["evaluate", w.ckpt, "--out", t / "run", "--drop", "x", "--drop",
                                                     "img"], "--drop"),
    "evaluate --corrupt occlusion on a vector": (lambda w, t: ["evaluate", w.ckpt, "--out", t / "run", "--corrupt",
                                                               "x:occlusion:3"], ("--corrupt x:occlusion:3", "'x'")),
    "evaluate --corrupt time_shift on an image": (lambda w, t: ["evaluate", w.ckpt, "--out", t / "run", "--corrupt",
                                                                "img:time_shift:3"], ("img:time_shift:3", "time axis")),
    "demo --seed -1": (lambda w, t: ["demo", "--out", t / "run", "--seed", "-1"], "--seed"),
    "distill --auto-scale nan": (lambda w, t: ["distill", w.student, "--out", t / "run", "--auto", "--auto-scale", "nan"],
                                 "--auto-scale"),
}
for _name, (_args, _culprit) in OPTIONS.items():
    case(f"range/{_name}")(lambda w, t, mp, a=_args, c=_culprit: Case(a(w, t), c))


# --- 10. config files: encodings, duplicate keys, nesting, alias bombs ------------------------------------------------
def config_bytes(name, make, culprit):
    @case(f"file/{name}")
    def _(w, t, mp):
        (t / "c.yaml").write_bytes(make(w))
        return Case(["train", t / "c.yaml", "--out", t / "run"], ("c.yaml", *culprit))


_BOMB = b"".join(b"%s: &%s [%s]\n" % (bytes([97 + i]), bytes([97 + i]), b",".join([b"*" + bytes([96 + i])] * 9 if i
                                                                                    else [b"x"] * 9)) for i in range(9))
config_bytes("binary", lambda w: bytes(range(256)) * 4, ("not UTF-8",))
config_bytes("latin1", lambda w: "data: {name: npz, path: caf\xe9.npz}\n".encode("latin-1"), ("not UTF-8", "0xe9"))
config_bytes("deep_list", lambda w: b"a: " + b"[" * 5000 + b"]" * 5000 + b"\n", ("nested too deeply",))
config_bytes("deep_mapping", lambda w: b"a: " + b"{b: " * 3000 + b"1" + b"}" * 3000 + b"\n", ("nested too deeply",))
config_bytes("nesting_past_the_limit", lambda w: b"model: " + b"[" * 40 + b"]" * 40 + b"\n", ("model[0]", "nested"))
config_bytes("alias_bomb", lambda w: _BOMB, ("aliases", "more than"))
config_bytes("duplicate_top_key", lambda w: w.cfg.read_bytes().replace(b"seed: 0", b"seed: 0\nseed: 5"),
             ("'seed' given twice", "line"))
config_bytes("duplicate_nested_key", lambda w: w.cfg.read_bytes().replace(b"  epochs: 1", b"  epochs: 1\n  epochs: 3"),
             ("'epochs' given twice",))
config_bytes("duplicate_flow_key", lambda w: w.cfg.read_bytes() + b"extra: {a: 1, a: 2}\n", ("'a' given twice",))
case("file/--set duplicate key")(lambda w, t, mp: Case(["train", w.cfg, "--out", t / "run", "--set",
                                                        "train={epochs: 1, epochs: 2}"], ("'epochs' given twice",)))
case("file/--set deep nesting")(lambda w, t, mp: Case(["train", w.cfg, "--out", t / "run", "--set",
                                                       "x=" + "[" * 3000 + "]" * 3000], ("--set x", "nested")))


# --- 11. data: sizes, shapes, label sets, presence ----------------------------------------------------------------------
npz_case("two_samples", ("no test sample",), x=np.zeros((2, 6), np.float32), img=np.zeros((2, 1, 8, 8), np.float32),
         label=np.array([0, 1]))
npz_case("labels_skip_classes", ("sample 2", "label 7", "no sample has label 2, 3, 4, 5, 6"),
         label=np.array([0, 1, 7])[np.arange(N) % 3])
npz_case("present_all_false", ("modality 'x'", "absent from every training sample"), present_x=np.zeros(N, bool))
npz_case("sample_with_no_modality", ("sample 5", "every modality absent"), present_x=np.arange(N) != 5,
         present_img=np.arange(N) != 5)
for _name, _img, _culprit in [("images_1x1", np.zeros((N, 1, 1, 1), np.float32), ("[1, 1, 1]", "too small")),
                               ("array_of_32_axes", np.zeros((N,) + (1,) * 32, np.float32), ("type: mlp",))]:
    case(f"npz/{_name}")(lambda w, t, mp, img=_img, c=_culprit: Case(
        train_with(w, t, npz_config(make_npz(t / "d.npz", img=img))), ("model.encoders.img", *c)))
npz_case("zero_width", ("'x'", "no values"), x=np.zeros((N, 0), np.float32))
npz_case("float64_beyond_float32", ("'x'", "sample 0", "infinite"), x=np.full((N, 6), 1e300))
npz_case("uint64_label_beyond_int64", ("sample 3",),
         label=np.where(np.arange(N) == 3, np.uint64(2**63), np.arange(N) % 3).astype(np.uint64))
npz_case("test_class_not_in_training", ("class 2", "no training sample"),
         split=np.where(np.arange(N) % 3 == 2, "test", "train"))


@case("npz/classes_option_twice")
def _(w, t, mp):
    cfg = npz_config(make_npz(t / "d.npz", label=np.array(["a", "b", "c"])[np.arange(N) % 3]))
    cfg["data"]["classes"] = ["a", "b", "c", "a"]
    return Case(train_with(w, t, cfg), ("d.npz", "'a' twice"))


@case("npz/kinds_image_on_a_vector")
def _(w, t, mp):
    cfg = npz_config(make_npz(t / "d.npz"))
    cfg["data"]["kinds"] = {"x": "image"}
    return Case(train_with(w, t, cfg), ("d.npz", "kinds.x", "[6]"))


@case("npz/member_of_zero_bytes")
def _(w, t, mp):
    import zipfile
    make_npz(t / "g.npz")
    with zipfile.ZipFile(t / "g.npz") as zin, zipfile.ZipFile(t / "d.npz", "w") as zout:
        for n in zin.namelist():
            zout.writestr(n, b"" if n == "x.npy" else zin.read(n))
    return Case(train_with(w, t, npz_config(t / "d.npz")), ("d.npz", "'x'"))


# --- 12. every field of a checkpoint's metadata ----------------------------------------------------------------------------
def _first_float(p):
    return next(k for k, v in p["state_dict"].items() if v.is_floating_point())


CHECKPOINT_FIELDS = {
    "num_classes_1e9": (lambda p: p.update(num_classes=10**9), "'num_classes'"),
    "num_classes_negative": (lambda p: p.update(num_classes=-3), "'num_classes'"),
    "num_classes_one": (lambda p: p.update(num_classes=1), "'num_classes'"),
    "num_classes_string": (lambda p: p.update(num_classes="3"), "'num_classes'"),
    "num_classes_bool": (lambda p: p.update(num_classes=True), "'num_classes'"),
    "shape_negative": (lambda p: p["specs"]["x"].update(shape=[-6]), "'specs'"),
    "shape_zero": (lambda p: p["specs"]["x"].update(shape=[0]), "'specs'"),
    "shape_huge": (lambda p: p["specs"]["x"].update(shape=[10**12]), "'specs'"),
    "shape_string": (lambda p: p["specs"]["x"].update(shape="6"), "'specs'"),
    "kind_unknown": (lambda p: p["specs"]["x"].update(kind="video"), ("'specs'", "video")),
    "spec_misnamed": (lambda p: p["specs"]["x"].update(name="img"), "'specs'"),
    "specs_empty": (lambda p: p.update(specs={}), "'specs'"),
    "seed_string": (lambda p: p["meta"].update(seed="zero"), "'meta.seed'"),
    "seed_negative": (lambda p: p["meta"].update(seed=-1), "'meta.seed'"),
    "seed_2**70": (lambda p: p["meta"].update(seed=2**70), "'meta.seed'"),
    "val_fraction_2": (lambda p: p["meta"].update(val_fraction=2.0), "'meta.val_fraction'"),
    "val_fraction_nan": (lambda p: p["meta"].update(val_fraction=float("nan")), "'meta.val_fraction'"),
    "meta_list": (lambda p: p.update(meta=[1]), "'meta'"),
    "standardise_nan": (lambda p: p["meta"].update(data_info={"standardise": {"x": {"mean": [float("nan")] * 6,
                                                                                     "std": [1.0] * 6}}}),
                        ("standardise", "x.mean")),
    "standardise_zero_std": (lambda p: p["meta"].update(data_info={"standardise": {"x": {"mean": [0.0] * 6,
                                                                                          "std": [0.0] * 6}}}),
                             ("standardise", "x.std")),
    "nan_weights": (lambda p: p["state_dict"][_first_float(p)].fill_(float("nan")), ("'state_dict'", "NaN")),
    "inf_weights": (lambda p: p["state_dict"][_first_float(p)].fill_(float("inf")), ("'state_dict'", "infinite")),
    "state_dict_list": (lambda p: p.update(state_dict=[1, 2]), "'state_dict'"),
    "model_config_string": (lambda p: p.update(model_config="mlp"), "'model_config'"),
}
for _name, (_edit, _culprit) in CHECKPOINT_FIELDS.items():
    case(f"checkpoint_field/{_name}")(lambda w, t, mp, e=_edit, c=_culprit, n=_name: Case(
        evaluate(w, t, tampered(w, t, "b.pt", e)), ("b.pt", *([c] if isinstance(c, str) else c))))
for _name in ("num_classes_1e9", "shape_negative", "seed_string", "nan_weights"):
    _edit, _culprit = CHECKPOINT_FIELDS[_name]
    case(f"checkpoint_field/export_{_name}")(lambda w, t, mp, e=_edit, c=_culprit: Case(
        ["export", tampered(w, t, "b.pt", e), "--out", t / "run"], ("b.pt", *([c] if isinstance(c, str) else c))))

    def _teacher(w, t, mp, e=_edit, c=_culprit):
        cfg = yaml.safe_load(w.student.read_text())
        cfg["distill"]["teacher"]["checkpoint"] = str(tampered(w, t, "b.pt", e))
        return Case(["distill", write_yaml(t / "s.yaml", cfg), "--out", t / "run"],
                    ("distill.teacher.checkpoint", *([c] if isinstance(c, str) else c)))
    case(f"checkpoint_field/teacher_{_name}")(_teacher)


# --- 13. every field of an export's model.json, and its ONNX file ------------------------------------------------------------
def exported(w) -> Path:
    """The world checkpoint's export (made once)."""
    folder = w.root / "export"
    if not folder.exists():
        code, _, err = cli("export", w.ckpt, "--out", folder)
        assert code == 0, err
    return folder


def export_copy(w, t, edit=None, files=None) -> Path:
    import shutil
    folder = t / "ex"
    shutil.copytree(exported(w), folder)
    if edit is not None:
        meta = json.loads((folder / "model.json").read_text())
        edit(meta)
        (folder / "model.json").write_text(json.dumps(meta))
    for name, data in (files or {}).items():
        (folder / name).write_bytes(data(w) if callable(data) else data)
    return folder


def predict_with(w, t, folder):
    return ["predict", folder, "--data", w.cfg, "--out", t / "run" / "p.jsonl"]


def _std(modality, mean, std):
    return lambda m: m["preprocessing"]["modalities"][modality].update(standardise={"mean": mean, "std": std})


MODEL_JSON = {
    "not_json": (None, {"model.json": b"{not json"}, "not JSON"),
    "binary": (None, {"model.json": bytes(range(256))}, "not JSON"),
    "a_list": (None, {"model.json": b"[1, 2]"}, "expected a JSON object"),
    "no_modalities": (lambda m: m.pop("modalities"), None, "modalities"),
    "modalities_string": (lambda m: m.update(modalities="x"), None, "modalities"),
    "modality_without_input": (lambda m: m.update(modalities=["x", "img", "audio"]), None, "inputs.audio"),
    "input_shape_string": (lambda m: m["inputs"]["x"].update(shape="6"), None, "inputs.x.shape"),
    "classes_named_twice": (lambda m: m.update(classes=["0", "0", "1"]), None, "classes"),
    "classes_fewer_than_outputs": (lambda m: m.update(classes=["0", "1"], num_classes=2), None, "logits over 2"),
    "files_list": (lambda m: m.update(files=["model.onnx"]), None, "files"),
    "onnx_path_traversal": (lambda m: m["files"].update(onnx="../../somewhere.onnx"), None,
                            ("files.onnx", "../../somewhere.onnx")),
    "onnx_absolute_path": (lambda m: m["files"].update(onnx="/etc/passwd"), None, ("files.onnx", "/etc/passwd")),
    "onnx_missing": (lambda m: m["files"].update(onnx="gone.onnx"), None, ("files.onnx", "gone.onnx", "missing")),
    "onnx_garbage": (None, {"model.onnx": b"garbage" * 100}, ("model.onnx", "not a loadable ONNX model")),
    "onnx_empty": (None, {"model.onnx": b""}, ("model.onnx", "not a loadable ONNX model")),
    "standardise_mean_nan": (_std("x", [float("nan")] * 6, [1.0] * 6), None, ("standardise", "x.mean")),
    "standardise_std_zero": (_std("x", [0.0] * 6, [0.0] * 6), None, ("standardise", "x.std")),
    "standardise_wrong_length": (_std("x", [0.0] * 3, [1.0] * 3), None, ("standardise", "3 means")),
    "format_other": (lambda m: m.update(format="other/1"), None, "format"),
    "checkpoint_seed_string": (lambda m: m["checkpoint"].update(seed="x"), None, "checkpoint.seed"),
}
for _name, (_edit, _files, _culprit) in MODEL_JSON.items():
    case(f"model_json/{_name}")(lambda w, t, mp, e=_edit, f=_files, c=_culprit: Case(
        predict_with(w, t, export_copy(w, t, e, f)), c))


@case("model_json/onnx_of_another_model")
def _(w, t, mp):
    other = export_copy(w, t)
    student = t / "student.onnx"
    # a model over x alone, exported from a one-modality run
    cfg = npz_config(w.data)
    cfg["model"] = {"encoders": {"x": {"type": "mlp", "hidden": [4]}}}
    code, _, err = cli("train", write_yaml(t / "x.yaml", cfg), "--out", t / "xrun")
    assert code == 0, err
    code, _, err = cli("export", t / "xrun" / "best.pt", "--out", t / "xexport")
    assert code == 0, err
    student.write_bytes((t / "xexport" / "model.onnx").read_bytes())
    (other / "model.onnx").write_bytes(student.read_bytes())
    return Case(predict_with(w, t, other), ("model.onnx", "does not match model.json"))


# --- 14. report inputs, torchrun variables -------------------------------------------------------------------------------------
REPORT_FILES = {
    "metrics_list": ({"metrics.json": "[1, 2]"}, ("metrics.json", "expected a JSON object")),
    "metrics_string": ({"metrics.json": '"hello"'}, ("metrics.json", "expected a JSON object")),
    "accuracy_string": ({"metrics.json": '{"accuracy": "high"}'}, ("metrics.json", "accuracy")),
    "confusion_ragged": ({"metrics.json": '{"accuracy": 0.5, "confusion": [[1, 2], [3]]}'}, ("confusion",)),
    "jsonl_line_list": ({"metrics.jsonl": "[1, 2]\n"}, ("metrics.jsonl", "line 1")),
    "jsonl_value_string": ({"metrics.jsonl": '{"epoch": "one"}\n'}, ("metrics.jsonl", "epoch")),
    "summary_list": ({"metrics.json": '{"accuracy": 0.5}', "summary.json": "[1]"}, ("summary.json",)),
    "run_json_list": ({"metrics.json": '{"accuracy": 0.5}', "run.json": "[1]"}, ("run.json",)),
}
for _name, (_files, _culprit) in REPORT_FILES.items():
    def _report(w, t, mp, files=_files, c=_culprit):
        (t / "r").mkdir()
        for name, text in files.items():
            (t / "r" / name).write_text(text)
        return Case(["report", t / "r", "--out", t / "run" / "r.html"], c)
    case(f"report/{_name}")(_report)
ENVIRONMENT = {
    "WORLD_SIZE=2 without torchrun": ({"WORLD_SIZE": "2"}, ("WORLD_SIZE=2", "torchrun")),
    "WORLD_SIZE not a number": ({"WORLD_SIZE": "two"}, "WORLD_SIZE"),
    "LOCAL_RANK negative": ({"LOCAL_RANK": "-1"}, "LOCAL_RANK"),
    "RANK beyond WORLD_SIZE": ({"RANK": "3", "WORLD_SIZE": "2", "MASTER_ADDR": "x", "MASTER_PORT": "1"}, "RANK=3"),
}
for _name, (_env, _culprit) in ENVIRONMENT.items():
    def _environment(w, t, mp, env=_env, c=_culprit):
        for key in ("WORLD_SIZE", "RANK", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
            mp.delenv(key, raising=False)
        for key, value in env.items():
            mp.setenv(key, value)
        return Case(["train", w.cfg, "--out", t / "run"], c)
    case(f"env/{_name}")(_environment)


# --- the campaign ----------------------------------------------------------------------------------------------
def test_the_campaign_is_large_enough():
    assert len(CASES) >= 300


@pytest.mark.parametrize("name", list(CASES))
def test_bad_input(name, world, tmp_path, monkeypatch):
    finished = snapshot(world.finished)
    c = CASES[name](world, tmp_path, monkeypatch)
    code, out, err = cli(*c.args)
    monkeypatch.undo()
    lines = err.strip().splitlines()
    assert code == 2, err
    assert len(lines) == 1, err
    assert "Traceback" not in err + out
    for culprit in ([c.culprit] if isinstance(c.culprit, str) else c.culprit):
        assert culprit in lines[0], f"{culprit!r} not named in: {lines[0]}"
    assert snapshot(world.finished) == finished
    if c.check is not None:
        c.check(world, tmp_path)
    elif tmp_path / "run" in [Path(str(a)) for a in c.args] and not name.startswith("disk/"):
        assert not (tmp_path / "run").exists()  # refused before anything was written


# --- generated corruptions (hypothesis) --------------------------------------------------------------------------
FUZZ = settings(max_examples=8, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


@FUZZ
@given(i=st.integers(0, N - 1), bad=st.sampled_from([-2, -40, N, 10**9, 2**40]))  # -1: unlabelled
def test_npz_label_corruption_names_the_sample(world, tmp_path, i, bad):
    label = np.arange(N) % 3
    label[i] = bad
    path = make_npz(tmp_path / "fuzz.npz", label=label)
    code, _, err = cli("train", write_yaml(tmp_path / "f.yaml", npz_config(path)), "--out", tmp_path / "run")
    assert code == 2 and len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert f"sample {i}:" in err and "fuzz.npz" in err and str(bad) in err
    assert not (tmp_path / "run").exists()


@FUZZ
@given(i=st.integers(0, N - 1), j=st.integers(0, 5), value=st.sampled_from([np.nan, np.inf, -np.inf]))
def test_npz_non_finite_value_names_the_sample(world, tmp_path, i, j, value):
    x = np.ones((N, 6), dtype=np.float32)
    x[i, j] = value
    path = make_npz(tmp_path / "fuzz.npz", x=x)
    code, _, err = cli("train", write_yaml(tmp_path / "f.yaml", npz_config(path)), "--out", tmp_path / "run")
    assert code == 2 and len(err.strip().splitlines()) == 1
    assert f"sample {i} " in err and "'x'" in err


@FUZZ
@given(i=st.integers(0, 11), kind=st.sampled_from(["missing", "escape", "suffix"]))
def test_manifest_bad_path_names_the_row(world, tmp_path, i, kind):
    cell = {"missing": f"gone{i}.npy", "escape": "../outside.npy", "suffix": f"f{i}.txt"}[kind]
    rows = list(world.rows)
    rows[i + 1] = f"{i % 3},{cell},s{i}.wav"
    path = world.manifest / f"fuzz_{i}_{kind}.csv"
    path.write_text("\n".join(rows) + "\n")
    code, _, err = cli("train", write_yaml(tmp_path / "f.yaml", manifest_config(path)), "--out", tmp_path / "run")
    assert code == 2 and len(err.strip().splitlines()) == 1
    assert f"row {i + 2}:" in err and cell in err


# --- what is accepted, documented -----------------------------------------------------------------------------------
def test_stereo_wav_is_downmixed_to_the_channel_mean(world, tmp_path):
    """Stereo is accepted (manifest and FSDD): the channels' mean, as the docstrings say."""
    from mmdistill.config import DataConfig
    from mmdistill.data import build_data
    from mmdistill.data.fsdd import read_wave

    left, right = tone(0), tone(2)
    write_wav(tmp_path / "st.wav", np.stack([left, right], axis=1))
    write_wav(tmp_path / "mono.wav", (left + right) / 2)
    assert np.allclose(read_wave(tmp_path / "st.wav", 8000), read_wave(tmp_path / "mono.wav", 8000), atol=1e-6)
    for name in ("st", "mono"):
        rows = ["label,snd"] + [f"{i % 3},{name}.wav" for i in range(6)]
        (tmp_path / f"{name}.csv").write_text("\n".join(rows) + "\n")
    built = {name: build_data(DataConfig(name="manifest", path=str(tmp_path / f"{name}.csv"),
                                         audio={"sample_rate": 8000, "standardize": False}))
             for name in ("st", "mono")}
    assert torch.allclose(built["st"].train.modalities["snd"], built["mono"].train.modalities["snd"], atol=1e-5)


def test_manifest_accepts_dotdot_that_stays_inside(world, tmp_path):
    from mmdistill.config import DataConfig
    from mmdistill.data import build_data

    rows = ["label,feat"] + [f"{i % 3},sub/../f{i}.npy" for i in range(12)]
    (world.manifest / "inside.csv").write_text("\n".join(rows) + "\n")
    data = build_data(DataConfig(name="manifest", path=str(world.manifest / "inside.csv")))
    assert data.num_classes == 3


# --- run directories: lock, overwrite, resume ------------------------------------------------------------------------
def test_overwrite_replaces_an_mmdistill_run(world, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "run.json").write_text(record("complete"))
    (out / "old.pt").write_bytes(b"old")
    assert cli("train", world.cfg, "--out", out, "--overwrite")[0] == 0
    assert not (out / "old.pt").exists() and read_record(out)["status"] == "complete"
    assert not (out / LOCK).exists()


def test_stale_lock_is_replaced_with_overwrite(world, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "run.json").write_text(record("running"))
    (out / LOCK).write_text(json.dumps({"pid": dead_pid(), "host": socket.gethostname()}))
    assert cli("train", world.cfg, "--out", out, "--overwrite")[0] == 0
    assert read_record(out)["status"] == "complete" and not (out / LOCK).exists()


def test_run_record_has_format_version_and_lock_while_open(tmp_path):
    with RunDir(tmp_path / "r", command="x", config={"a": 1}) as run:
        info = read_record(run.path)
        assert info["format"] == "mmdistill-run" and info["version"] == 2 and info["status"] == "running"
        assert json.loads((run.path / LOCK).read_text())["pid"] == os.getpid()
        with pytest.raises(RunDirError, match="is writing into this directory"):
            RunDir(tmp_path / "r", overwrite=True)
    assert read_record(tmp_path / "r")["status"] == "complete" and not (tmp_path / "r" / LOCK).exists()


def test_interrupted_and_failed_are_recorded(tmp_path):
    with pytest.raises(KeyboardInterrupt):
        with RunDir(tmp_path / "i"):
            raise KeyboardInterrupt
    assert read_record(tmp_path / "i")["status"] == "interrupted"
    with pytest.raises(ValueError):
        with RunDir(tmp_path / "f"):
            raise ValueError("boom")
    rec = read_record(tmp_path / "f")
    assert rec["status"] == "failed" and "boom" in rec["error"]


def test_resume_reopens_an_unfinished_run(tmp_path):
    out = tmp_path / "r"
    with pytest.raises(KeyboardInterrupt):
        with RunDir(out, command="first", config={"a": 1}) as run:
            (run / "last.pt").write_bytes(b"epoch 2")
            raise KeyboardInterrupt
    with RunDir(out, resume=True, command="again", config={"a": 1}) as run:
        assert (run / "last.pt").read_bytes() == b"epoch 2"  # files kept
        assert read_record(out)["status"] == "running" and (out / LOCK).exists()
        assert run.previous["status"] == "interrupted" and run.previous["command"] == "first"
    rec = read_record(out)
    assert rec["status"] == "complete" and len(rec["resumed"]) == 1 and "error" not in rec
    with pytest.raises(RunDirError, match="already complete"):
        RunDir(out, resume=True)
    (tmp_path / "plain").mkdir()
    (tmp_path / "plain" / "x.txt").write_text("x")
    with pytest.raises(RunDirError, match="nothing to resume"):
        RunDir(tmp_path / "plain", resume=True)
    with pytest.raises(RunDirError, match="no run to resume"):
        RunDir(tmp_path / "missing", resume=True)


@pytest.mark.parametrize("stop, code", [(KeyboardInterrupt, 130), (lambda: Interrupted(signal.SIGTERM), 143)])
def test_stopping_mid_run_in_process(world, tmp_path, monkeypatch, stop, code):
    """Ctrl-C / SIGTERM raised inside training: one line, exit 130 / 143, run.json interrupted, no lock."""
    engine = importlib.import_module("mmdistill.distill.engine")

    def stopped(*a, **k):
        raise stop()
    monkeypatch.setattr(engine, "predict", stopped)  # called at the end of the first epoch (validation)
    cfg = write_yaml(tmp_path / "c.yaml", npz_config(world.data, val_fraction=0.2))
    rc, _, err = cli("train", cfg, "--out", tmp_path / "run")
    assert rc == code and len(err.strip().splitlines()) == 1 and "interrupted" in err
    assert read_record(tmp_path / "run")["status"] == "interrupted" and not (tmp_path / "run" / LOCK).exists()


# --- signals (subprocesses) -------------------------------------------------------------------------------------------
def _start(world, out: Path) -> subprocess.Popen:
    cfg = write_yaml(out.parent / f"{out.name}.yaml", npz_config(world.data, epochs=100000))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO / "src"), os.environ.get("PYTHONPATH", "")])}
    return subprocess.Popen([sys.executable, "-m", "mmdistill", "train", str(cfg), "--out", str(out)], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))


def _wait_for_epoch(proc, out: Path, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while not (out / "last.pt").exists():
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline, "the run never finished an epoch"
        time.sleep(0.05)


def test_signals_exit_with_one_line_and_leave_interrupted(world, tmp_path):
    runs = {name: _start(world, tmp_path / name) for name in ("term", "int", "kill")}
    try:
        for (name, proc), sig in zip(runs.items(), (signal.SIGTERM, signal.SIGINT, signal.SIGKILL)):
            _wait_for_epoch(proc, tmp_path / name)
            proc.send_signal(sig)
        results = {name: (proc.wait(timeout=120), proc.communicate()[1]) for name, proc in runs.items()}
    finally:
        for proc in runs.values():
            if proc.poll() is None:
                proc.kill()
    for name, code in (("term", 143), ("int", 130)):
        rc, err = results[name]
        assert rc == code, err
        assert len(err.strip().splitlines()) == 1 and "interrupted" in err and "Traceback" not in err
        assert read_record(tmp_path / name)["status"] == "interrupted"
        assert not (tmp_path / name / LOCK).exists() and not list((tmp_path / name).rglob("*.part"))
    # SIGKILL leaves the lock of a dead process: the next run reports the run interrupted, refuses
    # to touch it without --overwrite, and --resume can reopen it
    killed = tmp_path / "kill"
    assert results["kill"][0] == -signal.SIGKILL and read_record(killed)["status"] == "running"
    code, _, err = cli("train", world.cfg, "--out", killed)
    assert code == 2 and "interrupted run" in err and len(err.strip().splitlines()) == 1
    assert read_record(killed)["status"] == "interrupted" and not (killed / LOCK).exists()
    with RunDir(killed, resume=True) as run:
        assert (run / "last.pt").exists()


def test_utf16_config_and_yaml_merge_keys_are_accepted(world, tmp_path):
    """YAML's own encodings (UTF-16 with a BOM) and a key a ``<<`` merge brings in, overridden: not duplicates."""
    (tmp_path / "u16.yaml").write_bytes(world.cfg.read_text().encode("utf-16"))
    code, _, err = cli("train", tmp_path / "u16.yaml", "--out", tmp_path / "a")
    assert code == 0, err
    text = world.cfg.read_text().replace("  epochs: 1", "  <<: {epochs: 5}\n  epochs: 1")
    (tmp_path / "merge.yaml").write_text(text)
    from mmdistill.config import load_config
    assert load_config(tmp_path / "merge.yaml").train.epochs == 1


def test_predict_maps_labels_by_the_exports_class_names(world, tmp_path):
    """Data holding a subset of the export's string classes is scored by class name, not by its own
    class list (where 'dog' would be index 0, the export's 'cat')."""
    names = np.array(["cat", "dog", "emu"])
    label = names[np.arange(N) % 3]
    split = np.where(np.arange(N) % 4 == 0, "test", "train")
    rng = np.random.default_rng(0)
    x = (rng.normal(size=(N, 6)) + 3 * (np.arange(N) % 3)[:, None]).astype(np.float32)
    img = rng.random((N, 1, 8, 8), dtype=np.float32)
    cfg = npz_config(make_npz(tmp_path / "full.npz", x=x, img=img, label=label, split=split))
    cfg["train"]["epochs"] = 5
    assert cli("train", write_yaml(tmp_path / "full.yaml", cfg), "--out", tmp_path / "run")[0] == 0
    assert cli("export", tmp_path / "run" / "best.pt", "--out", tmp_path / "export")[0] == 0
    keep = label != "cat"
    sub = npz_config(make_npz(tmp_path / "sub.npz", x=x[keep], img=img[keep], label=label[keep], split=split[keep]))
    code, out, err = cli("predict", tmp_path / "export", "--data", write_yaml(tmp_path / "sub.yaml", sub),
                         "--out", tmp_path / "p.jsonl")
    assert code == 0, err
    classes = json.loads((tmp_path / "export" / "model.json").read_text())["classes"]
    rows = [json.loads(line) for line in (tmp_path / "p.jsonl").read_text().splitlines()]
    truth = label[keep][split[keep] == "test"]
    assert [classes[r["label"]] for r in rows] == truth.tolist()  # the export's index of each sample's class
    accuracy = float(np.mean([r["class"] == t for r, t in zip(rows, truth)]))
    assert f"accuracy (fp32, ONNX Runtime): {accuracy:.4f}" in " ".join(out.split())


# --- the Python API: arguments are checked, TypeError / ValueError naming the argument --------------------------------------
@pytest.fixture(scope="module")
def api(world):
    import mmdistill as M

    data = M.build_data(M.DataConfig(name="npz", path=str(world.data)), val_fraction=0.0)
    make = lambda: M.build_model({"encoders": {"x": {"type": "mlp", "hidden": [4]}}}, data.specs, 3)  # noqa: E731
    return SimpleNamespace(M=M, data=data, model=make, cfg=M.TrainConfig(epochs=1, progress=False))


API = {
    "train model None": (lambda a: a.M.train(None, a.data, a.cfg), TypeError, "model"),
    "train data None": (lambda a: a.M.train(a.model(), None, a.cfg), TypeError, "data"),
    "train data a dataset": (lambda a: a.M.train(a.model(), a.data.train, a.cfg), TypeError, "data"),
    "train cfg a bad dict": (lambda a: a.M.train(a.model(), a.data, {"epochs": 0}), ValueError, "cfg: train.epochs"),
    "train cfg a string": (lambda a: a.M.train(a.model(), a.data, "fast"), TypeError, "cfg"),
    "train seed -1": (lambda a: a.M.train(a.model(), a.data, a.cfg, seed=-1), ValueError, "seed"),
    "train seed 2**70": (lambda a: a.M.train(a.model(), a.data, a.cfg, seed=2**70), ValueError, "seed"),
    "train seed a string": (lambda a: a.M.train(a.model(), a.data, a.cfg, seed="1"), TypeError, "seed"),
    "train device tpu": (lambda a: a.M.train(a.model(), a.data, a.cfg, device="tpu"), ValueError, "device"),
    "distill teacher is the student": (lambda a: (lambda m: a.M.distill(m, m, a.data, cfg=a.cfg))(a.model()),
                                       ValueError, "teachers"),
    "distill teachers None": (lambda a: a.M.distill(a.model(), None, a.data, cfg=a.cfg), TypeError, "teachers"),
    "distill teachers empty": (lambda a: a.M.distill(a.model(), [], a.data, cfg=a.cfg), ValueError, "teachers"),
    "distill a teacher not a module": (lambda a: a.M.distill(a.model(), [a.model(), 3], a.data, cfg=a.cfg), TypeError,
                                       "teachers[1]"),
    "distill student None": (lambda a: a.M.distill(None, a.model(), a.data, cfg=a.cfg), TypeError, "student"),
    "distill gamma -1": (lambda a: a.M.distill(a.model(), a.model(), a.data, gamma=-1, cfg=a.cfg), ValueError, "gamma"),
    "distill gamma nan": (lambda a: a.M.distill(a.model(), a.model(), a.data, gamma=float("nan"), cfg=a.cfg),
                          ValueError, "gamma"),
    "distill gamma 0 and no terms": (lambda a: a.M.distill(a.model(), a.model(), a.data, terms=[], gamma=0, cfg=a.cfg),
                                     ValueError, "gamma"),
    "distill terms None": (lambda a: a.M.distill(a.model(), a.model(), a.data, terms=None, cfg=a.cfg), TypeError,
                           "terms"),
    "distill a Term of NaN weight": (lambda a: a.M.distill(a.model(), a.model(), a.data, cfg=a.cfg, terms=[
        a.M.Term(name="kd", loss=a.M.build_loss("kd"), weight=float("nan"))]), ValueError, "terms[0].weight"),
    "build_model specs a list": (lambda a: a.M.build_model({"encoders": {"x": {"type": "mlp"}}},
                                                           list(a.data.specs.values()), 3), TypeError, "specs"),
    "build_model num_classes 0": (lambda a: a.M.build_model({"encoders": {"x": {"type": "mlp"}}}, a.data.specs, 0),
                                  ValueError, "num_classes"),
    "build_model num_classes 1e10": (lambda a: a.M.build_model({"encoders": {"x": {"type": "mlp"}}}, a.data.specs,
                                                               10**10), ValueError, "num_classes"),
    "build_model cfg None": (lambda a: a.M.build_model(None, a.data.specs, 3), TypeError, "cfg"),
    "build_data cfg None": (lambda a: a.M.build_data(None), TypeError, "cfg"),
    "build_data val_fraction 1.5": (lambda a: a.M.build_data(a.M.DataConfig(name="npz", path="x.npz"),
                                                             val_fraction=1.5), ValueError, "val_fraction"),
    "evaluate_model model None": (lambda a: a.M.evaluate_model(None, a.data.test), TypeError, "model"),
    "evaluate_model splits as dataset": (lambda a: a.M.evaluate_model(a.model(), a.data), TypeError, "dataset"),
    "evaluate_model drop unknown": (lambda a: a.M.evaluate_model(a.model(), a.data.test, drop=["zzz"]), ValueError,
                                    "drop"),
    "make_terms a string": (lambda a: a.M.make_terms("kd"), TypeError, "terms"),
    "load_checkpoint None": (lambda a: a.M.load_checkpoint(None), TypeError, "path"),
    "load_config None": (lambda a: a.M.load_config(None), TypeError, "path"),
}


@pytest.mark.parametrize("name", list(API))
def test_api_checks_its_arguments(api, name):
    call, error, argument = API[name]
    with pytest.raises(error) as info:
        call(api)
    assert str(info.value).startswith(argument), str(info.value)


def test_api_accepts_a_dict_as_train_config(api):
    fit = api.M.train(api.model(), api.data, {"epochs": 1, "progress": False})
    assert fit.best_epoch == 1
