"""Peak memory of distillation with and without the teacher cache, and training on data larger
than the memory a process may hold.

    python benchmarks/memory.py                 # everything, writes benchmarks/results/memory.{md,json}
    python benchmarks/memory.py --npy-mb 200    # a smaller beyond-RAM dataset

Each measurement is a fresh child process (``child`` below) reporting its peak resident set
(``VmHWM``: ``ru_maxrss`` without the parent's peak that ``ru_maxrss`` inherits across fork + exec;
file-backed pages of memory-mapped files included) and the peak of ``RssAnon`` (private memory
only, sampled every 10 ms from /proc/self/status), after its own imports and for the whole run.

* ``hinton``: configs/mnist_hinton_{teacher,student}.yaml (teacher 784-1200-1200-10, student
  784-800-800-10, KD at T = 20), 1 epoch of ``distill`` on the 10k MNIST subset;
* ``av_digits``: the packaged recipes (NST on each modality's last convolutional map, so the cache
  holds teacher feature maps), 1 epoch of ``distill`` on AV-Digits;
  each with the cache off, in memory (float32) and memory-mapped (float16). The teachers are
  trained for ``--teacher-epochs`` epochs once and reused through the demo's teacher cache: memory
  does not depend on how well they are trained.
* ``npy``: an ``npy_dir`` dataset of ``--npy-mb`` MB (10 classes of 1024-d float32 vectors around
  class means) generated in a temporary folder; a child sets ``RLIMIT_DATA`` to its own data size
  after importing torch plus 1/5 of the dataset, trains an MLP for one epoch on it and distils it
  into a smaller one with the cache memory-mapped in float16, then, under the same limit, tries to
  read the dataset into memory (``np.load`` without ``mmap_mode``), which must fail.
  ``RLIMIT_DATA`` (private writable memory, Linux >= 4.7) rather than ``RLIMIT_AS``: the address
  space counts the mapped file itself and torch's large virtual reservations.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
MB = 1 << 20
DIM = 1024
CLASSES = 10


# --- the child process -------------------------------------------------------------------------
def _status(key: str) -> int:
    """A /proc/self/status field in bytes (e.g. VmData, RssAnon)."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1]) * 1024
    raise KeyError(key)


class PeakAnon:
    """Samples RssAnon every 10 ms in a thread; ``peak`` is the largest value seen."""

    def __init__(self):
        self.peak = _status("RssAnon")
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self):
        while not self._stop.wait(0.01):
            self.peak = max(self.peak, _status("RssAnon"))

    def stop(self) -> int:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, _status("RssAnon"))
        return self.peak


def _maxrss() -> int:
    """Peak resident set of this process: VmHWM. Not ``getrusage(...).ru_maxrss``, which a child
    inherits across fork + exec (it reported the parent's 1.2 GB for a child that never held it)."""
    return _status("VmHWM")


class CacheSize:
    """Records the largest teacher cache (bytes) any fit of this process built."""

    def __init__(self):
        from mmdistill.distill import cache

        self.bytes = 0
        original = cache.TeacherCache.close

        def close(cache_self):
            self.bytes = max(self.bytes, cache_self.nbytes())
            original(cache_self)

        cache.TeacherCache.close = close


def child_recipe(args) -> dict:
    """One epoch of ``distill`` with a recipe, its teacher checkpoint and the cache settings."""
    import yaml

    from mmdistill.config import apply_overrides, parse_config
    from mmdistill.runs import run_distill

    sampler, size = PeakAnon(), CacheSize()
    after_imports = {"maxrss": _maxrss(), "rss_anon": _status("RssAnon")}
    raw = yaml.safe_load(Path(args.recipe).read_text())
    cache = ["train.cache_teacher=false"] if args.cache == "off" else [
        "train.cache_teacher=true", f"train.cache_storage={args.cache}", f"train.cache_dtype={args.dtype}"]
    over = ["train.epochs=1", "train.progress=false", "device=cpu", f"distill.teacher.checkpoint={args.teacher}",
            *cache, *args.set]
    cfg = parse_config(apply_overrides(raw, over), args.recipe)
    start = time.perf_counter()
    with tempfile.TemporaryDirectory() as out:
        summary = run_distill(cfg, Path(out) / "run")
    return {"seconds": time.perf_counter() - start, "peak_maxrss": _maxrss(), "peak_rss_anon": sampler.stop(),
            "after_imports": after_imports, "cache_bytes": size.bytes, "student_accuracy": summary["student"]["accuracy"],
            "train_samples": summary["dataset"]["train_samples"]}


def child_npy(args) -> dict:
    """Under RLIMIT_DATA = baseline + limit_fraction * dataset: train and distil one epoch each,
    then try to read the dataset into memory (which should fail: ``load_error``)."""
    import numpy as np
    import torch

    from mmdistill import api
    from mmdistill.config import DataConfig, TrainConfig
    from mmdistill.data import build_data
    from mmdistill.models import build_model

    torch.set_num_threads(1)
    torch.optim.Adam([torch.zeros(1, requires_grad=True)])  # its lazy imports (torch._dynamo, sympy) count as baseline
    sampler, cache_size = PeakAnon(), CacheSize()
    folder = Path(args.data)
    size = sum(f.stat().st_size for f in folder.glob("*.npy"))
    baseline = _status("VmData")
    limit = baseline + int(args.limit_fraction * size)
    resource.setrlimit(resource.RLIMIT_DATA, (limit, resource.getrlimit(resource.RLIMIT_DATA)[1]))
    out = {"data_bytes": size, "baseline_data_bytes": baseline, "limit_bytes": limit,
           "after_imports": {"maxrss": _maxrss(), "rss_anon": _status("RssAnon")}}
    data = build_data(DataConfig(name="npy_dir", path=str(folder)), seed=0, val_fraction=0.05)
    cfg = TrainConfig(epochs=1, batch_size=256, eval_batch_size=256, progress=False,
                      optimizer={"name": "adam", "lr": 1e-3}, val_fraction=0.05)
    start = time.perf_counter()
    teacher = build_model({"encoders": {"x": {"type": "mlp", "hidden": [64]}}}, data.specs, data.num_classes, seed=0)
    fit = api.train(teacher, data, cfg, device="cpu", seed=0)
    out["train"] = {"seconds": time.perf_counter() - start, "epochs": len(fit.history),
                    "val_accuracy": fit.best_val_accuracy}
    student = build_model({"encoders": {"x": {"type": "mlp", "hidden": [16]}}}, data.specs, data.num_classes, seed=1)
    start = time.perf_counter()
    cached = cfg.model_copy(update={"cache_storage": "mmap", "cache_dtype": "float16"})
    fit = api.distill(student, teacher, data, terms=["kd"], cfg=cached, device="cpu", seed=0)
    out["distill"] = {"seconds": time.perf_counter() - start, "epochs": len(fit.history),
                      "val_accuracy": fit.best_val_accuracy}
    out.update(train_samples=len(data.train), cache_bytes=cache_size.bytes, peak_maxrss=_maxrss(),
               peak_rss_anon=sampler.stop())
    try:
        loaded = np.load(folder / "x.npy")  # the whole dataset in memory, as without mmap
        out["load_error"] = None
        del loaded
    except MemoryError as err:
        out["load_error"] = f"{type(err).__name__}: {err}"
    return out


def make_npy(folder: Path, megabytes: float, seed: int = 0) -> Path:
    """An npy_dir of ``megabytes`` MB: ``x.npy`` [N, 1024] float32 = class mean + noise, ``label.npy``.

    Written in chunks through a memory map, so the writer never holds the dataset either."""
    import numpy as np

    folder.mkdir(parents=True, exist_ok=True)
    n = max(CLASSES * 10, int(megabytes * MB) // (DIM * 4))
    rng = np.random.default_rng(seed)
    means = rng.standard_normal((CLASSES, DIM)).astype(np.float32) * 0.3
    labels = rng.integers(0, CLASSES, n)
    np.save(folder / "label.npy", labels)
    x = np.lib.format.open_memmap(folder / "x.npy", mode="w+", dtype=np.float32, shape=(n, DIM))
    for start in range(0, n, 8192):
        stop = min(n, start + 8192)
        x[start:stop] = means[labels[start:stop]] + rng.standard_normal((stop - start, DIM), dtype=np.float32)
    x.flush()
    del x
    return folder


# --- the parent --------------------------------------------------------------------------------
def run_child(*args: str) -> tuple[dict | None, str]:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, str(Path(__file__).resolve()), "child", *args], capture_output=True,
                          text=True, env=env)
    if proc.returncode != 0:
        return None, proc.stderr.strip().splitlines()[-1] if proc.stderr.strip() else f"exit {proc.returncode}"
    return json.loads(proc.stdout.strip().splitlines()[-1]), ""


def teacher_checkpoint(recipe: Path, epochs: int, tmp: Path) -> str:
    import yaml

    from mmdistill.config import apply_overrides, parse_config
    from mmdistill.data import build_data
    from mmdistill.demo import train_or_reuse_teacher

    raw = apply_overrides(yaml.safe_load(recipe.read_text()), [f"train.epochs={epochs}", "train.progress=false",
                                                                "device=cpu"])
    cfg = parse_config(raw, str(recipe))
    data = build_data(cfg.data, seed=cfg.seed, val_fraction=cfg.train.val_fraction)
    folder = tmp / recipe.stem
    return train_or_reuse_teacher(cfg, data, folder, print, reuse=True)["checkpoint"]


def mib(n: int | None) -> str:
    return "-" if n is None else f"{n / MB:,.0f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command")
    c = sub.add_parser("child", help="one measurement (internal)")
    c.add_argument("kind", choices=["recipe", "npy"])
    c.add_argument("--recipe")
    c.add_argument("--teacher")
    c.add_argument("--cache", choices=["off", "memory", "mmap"], default="memory")
    c.add_argument("--dtype", choices=["float32", "float16"], default="float32")
    c.add_argument("--set", action="append", default=[])
    c.add_argument("--data")
    c.add_argument("--limit-fraction", type=float, default=0.2)
    m = sub.add_parser("make-npy", help="write an npy_dir dataset of --mb MB")
    m.add_argument("folder")
    m.add_argument("--mb", type=float, default=100)
    parser.add_argument("--npy-mb", type=float, default=1000)
    parser.add_argument("--teacher-epochs", type=int, default=1)
    parser.add_argument("--table", action="store_true", help="rewrite memory.md from memory.json")
    parser.add_argument("--only", nargs="+", choices=["hinton", "av_digits", "npy"], default=["hinton", "av_digits", "npy"])
    args = parser.parse_args()

    if args.command == "child":
        print(json.dumps(child_recipe(args) if args.kind == "recipe" else child_npy(args)))
        return
    if args.command == "make-npy":
        make_npy(Path(args.folder), args.mb)
        return

    from _common import RESULTS, save

    if args.table:
        runs = json.loads((RESULTS / "memory.json").read_text())["runs"]
        save("memory", json.loads((RESULTS / "memory.json").read_text()), markdown(runs))
        return
    from mmdistill.demo import recipe as packaged

    root = HERE.parent
    runs = []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        (tmp / "av_digits_teacher.yaml").write_text(json.dumps(packaged("av_digits_teacher")))
        (tmp / "av_digits_student.yaml").write_text(json.dumps(packaged("av_digits_student")))
        pairs = {"hinton": (root / "configs" / "mnist_hinton_teacher.yaml", root / "configs" / "mnist_hinton_student.yaml"),
                 "av_digits": (tmp / "av_digits_teacher.yaml", tmp / "av_digits_student.yaml")}
        for name in [n for n in ("hinton", "av_digits") if n in args.only]:
            teacher_recipe, student_recipe = pairs[name]
            ckpt = teacher_checkpoint(teacher_recipe, args.teacher_epochs, tmp)
            for cache, dtype in (("off", "float32"), ("memory", "float32"), ("mmap", "float16")):
                print(f"{name}: cache {cache} {dtype}", flush=True)
                out, err = run_child("recipe", "--recipe", str(student_recipe), "--teacher", ckpt, "--cache", cache,
                                     "--dtype", dtype)
                runs.append({"setup": name, "cache": cache, "cache_dtype": dtype, **(out or {"error": err})})
        if "npy" in args.only:
            folder = make_npy(tmp / "npy", args.npy_mb)
            print(f"npy_dir {args.npy_mb:.0f} MB", flush=True)
            out, err = run_child("npy", "--data", str(folder), "--limit-fraction", "0.2")
            runs.append({"setup": "npy_dir", **(out or {"error": err})})
            shutil.rmtree(folder, ignore_errors=True)
    payload = {"command": "python benchmarks/memory.py " + " ".join(sys.argv[1:]), "cpus": os.cpu_count(), "runs": runs}
    save("memory", payload, markdown(runs))


def markdown(runs: list[dict]) -> str:
    """The results page: one row per measurement."""
    from _common import markdown_table

    def size(n):
        return f"{n / MB:.2f} MiB" if n < 10 * MB else f"{n / MB:,.0f} MiB"

    rows = []
    for r in runs:
        if "error" in r:
            rows.append([r["setup"], r.get("cache", "-"), "-", "-", "-", f"failed: {r['error']}"])
        elif r["setup"] == "npy_dir":
            rows.append([f"npy_dir of {r['data_bytes'] / MB:,.0f} MiB under RLIMIT_DATA = imports "
                         f"{mib(r['baseline_data_bytes'])} MiB + data / 5",
                         f"train 1 epoch, then distil 1 epoch, cache mmap float16 ({size(r['cache_bytes'])})",
                         mib(r["after_imports"]["maxrss"]), mib(r["peak_maxrss"]), mib(r["peak_rss_anon"]),
                         f"{r['train']['seconds'] + r['distill']['seconds']:.0f}"])
            rows.append(["the same process, same limit", "np.load(x.npy) into memory", "-", "-", "-",
                         f"fails: {r['load_error']}" if r["load_error"] else "did not fail"])
        else:
            label = "off" if r["cache"] == "off" else f"{r['cache']}, {r['cache_dtype']} ({size(r['cache_bytes'])})"
            rows.append([f"{r['setup']} ({r['train_samples']:,} training samples)", label,
                         mib(r["after_imports"]["maxrss"]), mib(r["peak_maxrss"]), mib(r["peak_rss_anon"]),
                         f"{r['seconds']:.0f}"])
    table = markdown_table(["setup", "teacher cache (its size)", "RSS after imports (MiB)", "peak RSS (MiB)",
                            "peak RssAnon (MiB)", "seconds"], rows)
    return ("# Peak memory\n\n`python benchmarks/memory.py`: one fresh process per row, 1 epoch each. Peak "
            "RSS is VmHWM, which counts the pages of memory-mapped files (the dataset, an mmap cache); "
            "peak RssAnon is private memory only, sampled every 10 ms. Seconds are wall time on a shared "
            "2-core machine, not a speed measurement.\n\n" + table)


if __name__ == "__main__":
    main()
