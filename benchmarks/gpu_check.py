"""The GPU check (issue 23): every CUDA path of mmdistill, run once, in one go, on a fresh GPU machine.

Driven by ``benchmarks/gpu_check.sh`` (see there for the three ways to call it). Sub-commands:

``prepare``  (here, before a GPU call) stages into ``.gpu_carry/`` what the GPU machine lacks: the
             wheels of mmdistill's dependencies that its image does not hold (for CPython 3.12,
             x86-64) and the real data (FSDD recordings, the MNIST 10k subset).
``install``  (there) installs the carried wheels that are missing or older into a private folder,
             without a registry; checks that torch is a CUDA build, else installs the pinned torch
             (``Makefile``'s ``TORCH_PIN``) from the registry, where one is reachable.
``run``      the checks, in this order, each timed and recorded, within ``--budget`` seconds:

1. ``environment``: GPU name, driver, memory; torch, CUDA and cuDNN versions against the pin;
2. ``cuda_tests``: the tests marked ``cuda`` (they skip without a GPU): all must pass, none skip;
3. ``demo_epochs``: the demo's teacher (train) and student (distil: KD on the cached augmented views) recipes, one timed
   epoch each on the CPU and on the GPU (the second of two: the first warms up), then
   ``mmdistill profile`` of both checkpoints, which adds the CUDA latency rows;
4. ``cross_device``: the teacher written on CUDA evaluates and exports on the CPU, the one
   written on the CPU evaluates on CUDA and exports; same checkpoint, same accuracy on both;
5. ``resume``: a CUDA distillation killed with SIGKILL after its first epoch, resumed, against an
   uninterrupted run: the largest weight difference, with and without ``train.deterministic``;
6. ``torchrun``: ``torchrun --nproc_per_node=1`` (nccl) completes a distillation;
7. ``memory``: peak GPU memory of one distillation epoch with and without the teacher cache;
8. ``throughput``: ``benchmarks/throughput.py --device cuda``, both pairs, every mmdistill row
   (plain loops, cached and uncached KD, bf16, compile, deterministic), one round.

Writes ``benchmarks/results/gpu.json`` (and ``$OUT/gpu.json`` when ``$OUT`` is set, as on the
lent GPU machines) after every check, so a run cut short keeps what it measured, and prints a table.
``merge FIRST SECOND --out PATH`` combines a run with a second try of some of its checks
(``--only``): the second try's entries replace the first's.

With a lent GPU (device tool): ``bash benchmarks/gpu_check.sh --prepare`` here, then one call
``run(command="bash benchmarks/gpu_check.sh", carry=[".gpu_carry"], timeout_s=480)``; copy the
returned ``gpu.json`` to ``benchmarks/results/gpu.json``; on failures, fix and try those checks
again at once (``bash benchmarks/gpu_check.sh --only NAME...``, with ``GPU_CHECK_BUDGET`` fitted
to the device time left) and ``merge`` the two files.
``run --dry-run`` runs every step on the CPU at the smallest size (synthetic data where the real
data is not the point), to check commands, arguments and parsing before GPU time is spent; its
figures are not measurements.
"""
from __future__ import annotations

import argparse
import datetime
import importlib.metadata
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
CARRY = REPO / ".gpu_carry"
SITE = Path(os.environ.get("GPU_CHECK_SITE", "/tmp/mmdistill-site"))
FORMAT = "mmdistill-gpu-check/1"

#: distributions mmdistill (with its dev extras) needs that the GPU image lacks (device docs'
#: package list, 2026-11-17), pinned to the versions of the project's own environment; ``install``
#: only installs those missing or older there
WHEELS = ("pydantic==2.14.4", "pydantic-core==2.50.5", "annotated-types==0.8.0", "typing-inspection==0.4.5",
          "typing-extensions==4.16.0", "soundfile==0.14.0", "cffi==2.1.1", "pycparser==3.12", "librosa==0.11.0",
          "audioread==3.1.0", "decorator==5.3.2", "pooch==1.9.0", "platformdirs==4.14.9", "soxr==1.1.0")
PLATFORMS = ("manylinux_2_28_x86_64", "manylinux_2_27_x86_64", "manylinux_2_17_x86_64", "manylinux2014_x86_64",
             "manylinux1_x86_64")
DATA = ("fsdd/recordings", "mnist10k")

THROUGHPUT_ROWS = ("plain_student", "plain_kd_logits", "plain_kd_teacher", "mmdistill_train",
                   "mmdistill_distill_cache", "mmdistill_distill_nocache", "mmdistill_distill_cache_bf16",
                   "mmdistill_distill_cache_compile", "mmdistill_distill_cache_deterministic")


def torch_pin() -> str:
    """The torch version the Makefile pins (``TORCH_PIN := torch==X``)."""
    text = (REPO / "Makefile").read_text()
    found = re.search(r"^TORCH_PIN\s*:=\s*torch==(\S+)", text, re.M)
    if not found:
        raise SystemExit("Makefile: no TORCH_PIN := torch==VERSION line")
    return found.group(1)


# --- prepare (here) and install (there) -----------------------------------------------------------
def prepare(args) -> None:
    """Stage wheels and data into ``.gpu_carry`` (ignored by git; named in the device call's carry)."""
    wheels = CARRY / "wheels"
    wheels.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--only-binary=:all:", "--python-version",
           "3.12", "--implementation", "cp", *[a for p in PLATFORMS for a in ("--platform", p)], "-d", str(wheels),
           *WHEELS]
    print("$", " ".join(cmd[:8]), "...", flush=True)
    subprocess.run(cmd, check=True)
    root = Path(args.data_root or os.environ.get("MMDISTILL_DATA") or REPO.parent / "shared" / "data")
    for rel in DATA:
        src, dst = root / rel, CARRY / "data" / rel
        if not src.is_dir():
            raise SystemExit(f"{src}: not found; pass --data-root DIR (the folder with fsdd/ and mnist10k/)")
        if not dst.is_dir():
            shutil.copytree(src, dst)
    sha = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True, text=True).stdout.strip()
    (CARRY / "commit.txt").write_text(sha + "\n")  # the tree that travels has no .git
    size = sum(p.stat().st_size for p in CARRY.rglob("*") if p.is_file())
    print(f"staged {CARRY} ({size / 2**20:.1f} MiB: {len(list(wheels.glob('*.whl')))} wheels, data {', '.join(DATA)})")
    print('next, on the GPU machine: run(command="bash benchmarks/gpu_check.sh", carry=[".gpu_carry"], timeout_s=480)')


def _version_tuple(v: str) -> tuple:
    return tuple(int(x) if x.isdigit() else 0 for x in re.split(r"[.+-]", v)[:4])


def _wheel_dist(path: Path) -> tuple[str, str]:
    name, version = path.name.split("-")[:2]
    return name.replace("_", "-").lower(), version


def install(args) -> None:
    """Install the carried wheels that are missing or older into ``SITE``; report torch."""
    wheels = sorted((CARRY / "wheels").glob("*.whl"))
    wanted = []
    for whl in wheels:
        name, version = _wheel_dist(whl)
        try:
            have = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            have = None
        if have is None or _version_tuple(have) < _version_tuple(version):
            wanted.append(whl)
            print(f"install {name} {version} (found {have or 'none'})")
    if wanted:
        SITE.mkdir(parents=True, exist_ok=True)
        subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-index", "--no-deps", "--no-compile",
                        "--no-cache-dir", "--upgrade", "--target", str(SITE), *map(str, wanted)], check=True)
    elif not wheels:
        print(f"no wheels in {CARRY / 'wheels'} (run `bash benchmarks/gpu_check.sh --prepare` first, if the "
              "machine lacks mmdistill's dependencies)")
    probe = subprocess.run([sys.executable, "-c", "import torch; print(torch.__version__, torch.cuda.is_available())"],
                           capture_output=True, text=True)
    if probe.returncode == 0 and probe.stdout.split()[-1] == "True":
        print(f"torch {probe.stdout.split()[0]} with CUDA (the Makefile pins {torch_pin()})")
        return
    print(f"no CUDA build of torch here ({(probe.stdout or probe.stderr).strip()[:200]}); "
          f"installing torch=={torch_pin()} from the package registry", flush=True)
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--target", str(SITE), f"torch=={torch_pin()}"],
                   check=True)


# --- run: helpers ----------------------------------------------------------------------------------
class Ctx:
    """What every check shares: device, sizes, the work folder, the environment of subprocesses."""

    def __init__(self, args, work: Path):
        self.dry = args.dry_run
        self.gpu = "cpu" if self.dry else "cuda"  # the dry run does the GPU's part on the CPU
        self.work = work
        self.deadline = time.monotonic() + args.budget
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO / "src"), env.get("PYTHONPATH")]))
        env.setdefault("PYTHONUNBUFFERED", "1")
        if (CARRY / "data").is_dir() and not env.get("MMDISTILL_DATA"):
            env["MMDISTILL_DATA"] = str(CARRY / "data")
        if not self.dry:
            env.setdefault("MMDISTILL_CACHE", str(Path(tempfile.gettempdir()) / "mmdistill-cache"))
        self.env = env
        self.shared: dict = {}

    def left(self) -> float:
        return self.deadline - time.monotonic()

    def sets(self, role: str, epochs: int) -> list[str]:
        """``--set`` overrides for the demo recipes at this check's size: real AV-Digits with one
        pair per recording on the GPU, a tiny synthetic task in the dry run."""
        out = [f"train.epochs={epochs}", "train.progress=false"]
        if self.dry:
            out += ["data={name: synthetic, train_size: 64, test_size: 16}", "train.batch_size=16"]
            if role == "teacher":
                out += ["model.encoders.image.channels=[4]", "model.encoders.audio.channels=[4]", "model.fusion.dim=8"]
        else:
            out += ["data.pairs_per_recording=1"]
        return out

    def run(self, *cmd, timeout: float | None = None, check: bool = True) -> subprocess.CompletedProcess:
        """A subprocess in the repository, within the time left; output kept for the error message."""
        limit = max(5.0, min(timeout or 1e9, self.left()))
        done = subprocess.run([str(c) for c in cmd], cwd=REPO, env=self.env, capture_output=True, text=True,
                              timeout=limit)
        if check and done.returncode:
            tail = (done.stderr.strip() or done.stdout.strip() or "no output").splitlines()[-3:]
            raise RuntimeError(f"{' '.join(map(str, cmd[:6]))} ... exited {done.returncode}: {' | '.join(tail)}")
        return done

    def mmdistill(self, *args, **kw) -> subprocess.CompletedProcess:
        """The mmdistill CLI: a fresh process on the GPU; in the dry run, in this process (the same
        arguments through the same parser, without a process start per call)."""
        if not self.dry:
            return self.run(sys.executable, "-m", "mmdistill", *args, **kw)
        from mmdistill.cli import main as cli

        try:
            cli([str(a) for a in args])
            code = 0
        except SystemExit as exit:
            code = exit.code or 0
        if code:
            raise RuntimeError(f"mmdistill {' '.join(map(str, args[:4]))} ... exited {code}")
        return subprocess.CompletedProcess(args, 0, "", "")


def recipe_file(ctx: Ctx, name: str) -> Path:
    """A packaged recipe written to the work folder (a CLI run needs a file)."""
    path = ctx.work / f"{name}.yaml"
    if not path.exists():
        src = REPO / "src" / "mmdistill" / "recipes" / f"{name}.yaml"
        path.write_text(src.read_text())
    return path


def metrics(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines() if line.strip()]


def weights(path: Path) -> dict:
    import torch

    return torch.load(path, map_location="cpu", weights_only=True)["state_dict"]


def weight_distance(a: Path, b: Path) -> dict:
    """Largest absolute and relative L2 difference between two checkpoints' weights."""
    import torch

    wa, wb = weights(a), weights(b)
    if wa.keys() != wb.keys():
        raise RuntimeError(f"{a} and {b} hold different parameters")
    keys = [k for k in wa if wa[k].is_floating_point() and wa[k].numel()]
    diff = max(float((wa[k].double() - wb[k].double()).abs().max()) for k in keys)
    num = sum(float((wa[k].double() - wb[k].double()).pow(2).sum()) for k in keys)
    den = sum(float(wa[k].double().pow(2).sum()) for k in keys)
    return {"max_abs": diff, "relative_l2": (num / den) ** 0.5 if den else 0.0,
            "identical": all(torch.equal(wa[k], wb[k]) for k in wa)}


# --- run: the checks -------------------------------------------------------------------------------
def check_environment(ctx: Ctx) -> dict:
    import torch

    out = {"python": sys.version.split()[0], "torch": torch.__version__, "torch_pinned": torch_pin(),
           "torch_cuda": torch.version.cuda, "cuda_available": torch.cuda.is_available(),
           "cpus": os.cpu_count(), "commit": commit()}
    smi = shutil.which("nvidia-smi")
    if smi:
        q = subprocess.run([smi, "--query-gpu=name,driver_version,memory.total", "--format=csv,noheader"],
                           capture_output=True, text=True)
        if q.returncode == 0 and q.stdout.strip():
            name, driver, memory = [s.strip() for s in q.stdout.strip().splitlines()[0].split(",")]
            out.update(gpu=name, driver=driver, gpu_memory=memory)
    if torch.cuda.is_available():
        p = torch.cuda.get_device_properties(0)
        out.update(device=torch.cuda.get_device_name(0), capability=f"{p.major}.{p.minor}",
                   multiprocessors=p.multi_processor_count, cudnn=torch.backends.cudnn.version(),
                   bf16=torch.cuda.is_bf16_supported())
    elif not ctx.dry:
        raise RuntimeError(f"torch {torch.__version__} sees no CUDA device")
    if torch.__version__.split("+")[0] != torch_pin():
        out["note"] = (f"torch {torch.__version__} is not the pinned {torch_pin()}: the machine's own CUDA build "
                       "was used (no registry there, and a CUDA wheel of torch is over the carry limit)")
    return out


def commit() -> str | None:
    sha = CARRY / "commit.txt"
    if sha.is_file():
        return sha.read_text().strip()
    done = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True, text=True)
    return done.stdout.strip() or None


def cuda_test_files() -> list[Path]:
    """Test files holding tests marked ``cuda``."""
    return sorted(p for p in (REPO / "tests").glob("test_*.py") if "mark.cuda" in p.read_text())


def check_cuda_tests(ctx: Ctx) -> dict:
    """pytest -m cuda on the files that have such tests; on a GPU all must pass and none skip,
    in the dry run all must skip (no CUDA)."""
    import xml.etree.ElementTree as ET

    files = cuda_test_files()
    if not files:
        raise RuntimeError("no test is marked cuda")
    report = ctx.work / "cuda_tests.xml"
    done = ctx.run(sys.executable, "-m", "pytest", "-m", "cuda", "-q", "-p", "no:cacheprovider", "-n", "0",
                   f"--junitxml={report}", *files, check=False, timeout=240)
    suite = ET.parse(report).getroot()
    suite = suite if suite.tag == "testsuite" else suite.find("testsuite")
    counts = {k: int(suite.get(k, 0)) for k in ("tests", "failures", "errors", "skipped")}
    counts["passed"] = counts["tests"] - counts["failures"] - counts["errors"] - counts["skipped"]
    failed = [c.get("classname", "") + "::" + c.get("name", "") for c in suite.iter("testcase")
              if c.find("failure") is not None or c.find("error") is not None]
    out = {**counts, "files": [p.name for p in files], "failed": failed[:20]}
    if done.returncode not in (0, 5) or failed:
        raise CheckFailed(f"{len(failed)} CUDA tests failed: {', '.join(failed[:3])}", out)
    if counts["tests"] == 0:
        raise CheckFailed("no CUDA test was collected", out)
    if not ctx.dry and counts["skipped"]:
        raise CheckFailed(f"{counts['skipped']} CUDA tests skipped on a GPU", out)
    if ctx.dry and counts["skipped"] != counts["tests"]:
        raise CheckFailed("without CUDA every cuda-marked test must skip", out)
    return out


def _epoch(run: Path) -> dict:
    """The last epoch's time and samples/s (the second of two: the first includes warm-up)."""
    last = metrics(run)[-1]
    return {"epoch_seconds": round(last["epoch_seconds"], 4)}


def check_demo_epochs(ctx: Ctx) -> dict:
    out = {}
    devices = ["cpu"] if ctx.dry else ["cpu", "cuda"]
    teacher_cfg, student_cfg = recipe_file(ctx, "av_digits_teacher"), recipe_file(ctx, "av_digits_student")
    epochs = 1 if ctx.dry else 2  # the second epoch is timed: the first warms up (cuDNN autotuning)
    for device in devices:
        t_run, s_run = ctx.work / f"teacher_{device}", ctx.work / f"student_{device}"
        ctx.mmdistill("train", teacher_cfg, "--out", t_run, "--overwrite", "--device", device,
                      *sum((["--set", s] for s in ctx.sets("teacher", epochs)), []), timeout=300)
        ctx.mmdistill("distill", student_cfg, "--out", s_run, "--overwrite", "--device", device,
                      *sum((["--set", s] for s in ctx.sets("student", epochs)), []),
                      "--set", f"distill.teacher.checkpoint={t_run / 'best.pt'}", timeout=300)
        out[f"teacher_epoch_s_{device}"] = _epoch(t_run)["epoch_seconds"]
        out[f"student_epoch_s_{device}"] = _epoch(s_run)["epoch_seconds"]
        out[f"teacher_backends_{device}"] = json.loads((t_run / "run.json").read_text()).get("backends")
    if not ctx.dry:
        out["teacher_speedup_gpu_over_cpu"] = out["teacher_epoch_s_cpu"] / out["teacher_epoch_s_cuda"]
        out["student_speedup_gpu_over_cpu"] = out["student_epoch_s_cpu"] / out["student_epoch_s_cuda"]
    ctx.shared["teacher_gpu"] = ctx.work / f"teacher_{ctx.gpu}" / "best.pt"
    ctx.shared["teacher_cpu"] = ctx.work / "teacher_cpu" / "best.pt"
    prof = ctx.work / "profile"
    ctx.mmdistill("profile", ctx.shared["teacher_gpu"], "--compare", ctx.work / f"student_{ctx.gpu}" / "best.pt",
                  "--out", prof, "--repeats", "20" if ctx.dry else "100", timeout=240)
    result = json.loads((prof / "profile.json").read_text())
    keep = ("params", "macs", "torch_ms_b1", "onnx_ms_b1", "cuda_torch_ms_b1", "cuda_torch_sps_b64",
            "cuda_onnx_ms_b1", "cuda_onnx_sps_b64")
    out["profile"] = [{k: m.get(k) for k in keep if k in m} for m in result["models"]]
    if not ctx.dry and not any("cuda_torch_ms_b1" in m for m in result["models"]):
        raise CheckFailed("mmdistill profile measured no CUDA latency", out)
    return out


def teachers(ctx: Ctx) -> None:
    """The teacher checkpoints written on each device, trained here (one epoch) when
    ``demo_epochs`` did not run first (``--only``)."""
    for key, device in (("teacher_gpu", ctx.gpu), ("teacher_cpu", "cpu")):
        if key not in ctx.shared:
            run = ctx.work / f"teacher_{device}"
            if not (run / "best.pt").is_file():
                ctx.mmdistill("train", recipe_file(ctx, "av_digits_teacher"), "--out", run, "--overwrite",
                              "--device", device, *sum((["--set", s] for s in ctx.sets("teacher", 1)), []),
                              timeout=300)
            ctx.shared[key] = run / "best.pt"


def check_cross_device(ctx: Ctx) -> dict:
    """Evaluate and export each teacher checkpoint on the other device than the one that wrote it."""
    teachers(ctx)
    out = {}
    legs = [("written_on_gpu", ctx.shared["teacher_gpu"], "cpu"), ("written_on_cpu", ctx.shared["teacher_cpu"], ctx.gpu)]
    if not ctx.dry:  # the same checkpoint evaluated on its own device too: accuracy must agree
        legs.append(("written_on_gpu_same_device", ctx.shared["teacher_gpu"], "cuda"))
    for name, ckpt, device in legs:
        ev = ctx.work / f"eval_{name}"
        ctx.mmdistill("evaluate", ckpt, "--out", ev, "--overwrite", "--device", device, "--no-cost", timeout=180)
        acc = json.loads((ev / "metrics.json").read_text())["accuracy"]
        out[name] = {"evaluated_on": device, "accuracy": acc}
        if name != "written_on_gpu_same_device":
            ex = ctx.work / f"export_{name}"
            ctx.mmdistill("export", ckpt, "--out", ex, "--overwrite", timeout=180)
            out[name]["exported"] = (ex / "model.json").is_file()
            if not out[name]["exported"]:
                raise CheckFailed(f"export of {ckpt} wrote no model.json", out)
    if "written_on_gpu_same_device" in out:
        a, b = out["written_on_gpu"]["accuracy"], out["written_on_gpu_same_device"]["accuracy"]
        out["accuracy_cpu_minus_gpu"] = a - b
        if abs(a - b) > 0.005:
            raise CheckFailed(f"the CUDA checkpoint scores {a:.4f} on CPU but {b:.4f} on CUDA", out)
    return out


def _distill_args(ctx: Ctx, out: Path, epochs: int, *extra: str) -> list:
    teachers(ctx)
    return ["distill", recipe_file(ctx, "av_digits_student"), "--out", out, "--device", ctx.gpu,
            *sum((["--set", s] for s in ctx.sets("student", epochs)), []),
            "--set", f"distill.teacher.checkpoint={ctx.shared['teacher_gpu']}", *extra]


def _killed_after_first_epoch(ctx: Ctx, out: Path, epochs: int, extra: list) -> int:
    """Start a distillation, SIGKILL it once its first epoch's state is written; the epochs done."""
    import torch

    shutil.rmtree(out, ignore_errors=True)
    proc = subprocess.Popen([sys.executable, "-m", "mmdistill", *map(str, _distill_args(ctx, out, epochs, *extra))],
                            cwd=REPO, env=ctx.env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    state = out / "state.pt"
    stop = time.monotonic() + min(240, ctx.left())
    while time.monotonic() < stop and proc.poll() is None and not state.exists():
        time.sleep(0.02)
    if proc.poll() is None and not state.exists():
        proc.kill()
        proc.wait()
        raise RuntimeError("the run wrote no training state within the time left")
    if proc.poll() is not None:
        raise RuntimeError(f"the run ended before it could be killed (exit {proc.returncode}): "
                           f"{(proc.stderr.read() or '').strip()[-300:]}")
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    proc.stderr.close()
    done = int(torch.load(state, map_location="cpu", weights_only=True)["epoch"])
    if done >= epochs:
        raise RuntimeError("the run finished all epochs before the kill landed")
    return done


def check_resume(ctx: Ctx) -> dict:
    out = {}
    epochs = 2 if ctx.dry else 3
    variants = [("default", []), ("deterministic", ["--set", "train.deterministic=true"])]
    for variant, extra in variants[1:] if ctx.dry else variants:  # on the CPU both are deterministic
        whole, cut = ctx.work / f"resume_{variant}_whole", ctx.work / f"resume_{variant}_cut"
        ctx.mmdistill(*_distill_args(ctx, whole, epochs, *extra), "--overwrite", timeout=240)
        done = _killed_after_first_epoch(ctx, cut, epochs, extra)
        ctx.mmdistill(*_distill_args(ctx, cut, epochs, *extra), "--resume", timeout=240)
        dist = weight_distance(whole / "last.pt", cut / "last.pt")
        out[variant] = {"killed_after_epoch": done, **dist}
    # deterministic algorithms promise bit-identical weights on every device; without them a CUDA
    # run's distance is measured and recorded, not judged
    if not out["deterministic"]["identical"]:
        raise CheckFailed("with train.deterministic the resumed run's weights differ "
                          f"(max {out['deterministic']['max_abs']:.3g})", out)
    return out


def check_torchrun(ctx: Ctx) -> dict:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    run = ctx.work / "torchrun"
    done = ctx.run(sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=1", "--master_addr=127.0.0.1",
                   f"--master_port={port}", "-m", "mmdistill", *_distill_args(ctx, run, 1), "--overwrite", timeout=240)
    record = json.loads((run / "run.json").read_text())
    if record.get("status") != "complete":
        raise CheckFailed(f"the torchrun distillation ended {record.get('status')}", {"run_json": record})
    return {"status": record["status"], "backend": "nccl" if ctx.gpu == "cuda" else "gloo",
            "accuracy": json.loads((run / "metrics.json").read_text())["accuracy"], "seconds": record.get("seconds"),
            "stderr_tail": done.stderr.strip().splitlines()[-2:]}


def check_memory(ctx: Ctx) -> dict:
    if ctx.dry:  # in this process: the same code, no process start
        import contextlib
        import io

        buf = io.StringIO()
        with contextlib.redirect_stdout(buf):
            memory_worker(argparse.Namespace(device="cpu", dry_run=True))
        return json.loads(buf.getvalue().split("RESULT ", 1)[1])
    done = ctx.run(sys.executable, str(Path(__file__).resolve()), "memory-worker", "--device", ctx.gpu,
                   *(["--dry-run"] if ctx.dry else []), timeout=240)
    lines = [line for line in done.stdout.splitlines() if line.startswith("RESULT ")]
    return json.loads(lines[-1].removeprefix("RESULT "))


def memory_worker(args) -> None:
    """One distillation epoch of the demo pair with and without the teacher cache: peak GPU memory."""
    import torch

    from mmdistill import api
    from mmdistill.config import TrainConfig, parse_config
    from mmdistill.data import build_data
    from mmdistill.demo import recipe
    from mmdistill.models import build_model

    tcfg, scfg = parse_config(recipe("av_digits_teacher")), parse_config(recipe("av_digits_student"))
    data_cfg = ({"name": "synthetic", "train_size": 64, "test_size": 16} if args.dry_run
                else {**scfg.data.model_dump(), "pairs_per_recording": 1})
    data = build_data(parse_config({**recipe("av_digits_student"), "data": data_cfg}).data, seed=0, val_fraction=0.0)
    device = torch.device(args.device)
    out = {"train_samples": len(data.train)}
    for cache in (True, False):
        torch.manual_seed(0)
        teacher = build_model(tcfg.model.model_dump(exclude_none=True), data.specs, data.num_classes)
        student = build_model(scfg.model.model_dump(exclude_none=True), data.specs, data.num_classes)
        cfg = TrainConfig(epochs=1, batch_size=scfg.train.batch_size, val_fraction=0.0, progress=False,
                          cache_teacher=cache)
        if device.type == "cuda":
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats()
            base = torch.cuda.memory_allocated()
        api.distill(student, teacher, data, terms=[{"name": "kd", "weight": 0.5}], gamma=0.5, cfg=cfg,
                    device=str(device))
        key = "cache" if cache else "nocache"
        if device.type == "cuda":
            torch.cuda.synchronize()
            out[f"peak_allocated_mib_{key}"] = round((torch.cuda.max_memory_allocated() - base) / 2**20, 2)
            out[f"peak_reserved_mib_{key}"] = round(torch.cuda.max_memory_reserved() / 2**20, 2)
        else:
            out[f"peak_allocated_mib_{key}"] = None  # no device memory counters on the CPU (dry run)
        del teacher, student
    print("RESULT " + json.dumps(out))


def check_throughput(ctx: Ctx) -> dict:
    """benchmarks/throughput.py on the GPU, one pair per call (a call cut short loses only its pair)."""
    out = {}
    sys.path.insert(0, str(HERE))
    import throughput

    unknown = [r for r in THROUGHPUT_ROWS if r not in throughput.ROWS]
    if unknown:
        raise RuntimeError(f"benchmarks/throughput.py has no rows {unknown}")
    for pair in ("hinton", "av_digits"):
        name = ctx.work / f"throughput_{pair}"
        if ctx.dry:  # every row's name is checked above; one row per pair runs, tiny
            rows = ["plain_kd_logits" if pair == "hinton" else "mmdistill_distill_cache_deterministic"]
            size = ["--quick", "--samples", "64", "--threads", "1"]
        else:
            rows, size = list(THROUGHPUT_ROWS), ["--rounds", "1", "--steps", "100"]
        try:
            ctx.run(sys.executable, str(HERE / "throughput.py"), "--device", ctx.gpu, "--pairs", pair, "--rows", *rows,
                    *size, "--keep-going", "--name", name, timeout=300)
        except (subprocess.TimeoutExpired, RuntimeError) as err:  # the other pair's figures are kept
            out[pair] = {"failed": {"all": f"{type(err).__name__}: {str(err)[-300:]}"}}
            continue
        result = json.loads(Path(f"{name}.json").read_text())
        res = result["pairs"][pair]
        out[pair] = {"samples_per_s": res["samples_per_s"], "ratios": res["ratios"],
                     "roofline_samples_per_s": res["roofline_samples_per_s"], "machine": result["machine"],
                     "failed": {row: why for row, why in res["skipped"].items() if why.startswith("failed")}}
    failed = [f"{pair}/{row}" for pair, res in out.items() for row in res["failed"]]
    if failed:
        raise CheckFailed(f"throughput rows failed: {', '.join(failed)}", out)
    return out


CHECKS = (("environment", check_environment, 10), ("cuda_tests", check_cuda_tests, 60),
          ("demo_epochs", check_demo_epochs, 90), ("cross_device", check_cross_device, 40),
          ("resume", check_resume, 80), ("torchrun", check_torchrun, 25), ("memory", check_memory, 25),
          ("throughput", check_throughput, 120))


class CheckFailed(Exception):
    """A check that ran and found a failure; ``figures`` keeps what it measured."""

    def __init__(self, message: str, figures: dict):
        super().__init__(message)
        self.figures = figures


def summary_line(name: str, figures: dict) -> str:
    """The table's short figure column for one check."""
    f = figures or {}
    if name == "environment":
        return f"{f.get('gpu') or f.get('device') or 'no GPU'}, driver {f.get('driver', '-')}, torch {f.get('torch')}"
    if name == "cuda_tests":
        return f"{f.get('passed', 0)} passed, {f.get('failures', 0) + f.get('errors', 0)} failed, {f.get('skipped', 0)} skipped"
    if name == "demo_epochs":
        parts = [f"{k.replace('_epoch_s_', ' ')} {v:.2f}s" for k, v in f.items() if "_epoch_s_" in k]
        return ", ".join(parts)
    if name == "resume":
        return ", ".join(f"{k}: max |dw| {v['max_abs']:.2g}" for k, v in f.items() if isinstance(v, dict))
    if name == "memory":
        return ", ".join(f"{k.replace('peak_allocated_mib_', '')} {v} MiB" for k, v in f.items() if "allocated" in k)
    if name == "throughput":
        return ", ".join(f"{p}: cached KD {v['samples_per_s'].get('mmdistill_distill_cache', 0):,.0f}/s"
                         for p, v in f.items() if isinstance(v, dict) and "samples_per_s" in v)
    if name == "cross_device":
        return ", ".join(f"{k} -> {v['evaluated_on']}: {v['accuracy']:.4f}" for k, v in f.items() if isinstance(v, dict))
    if name == "torchrun":
        return f"{f.get('backend')}, {f.get('status')}"
    return ""


def run(args) -> int:
    import torch  # noqa: F401  (fails here, with its own message, where torch is missing)

    work = Path(args.work or tempfile.mkdtemp(prefix="gpu-check-"))
    work.mkdir(parents=True, exist_ok=True)
    out_paths = [Path(args.out or (work / "gpu.json" if args.dry_run else HERE / "results" / "gpu.json"))]
    if os.environ.get("OUT") and not args.dry_run:
        out_paths.append(Path(os.environ["OUT"]) / "gpu.json")
    ctx = Ctx(args, work)
    result = {"format": FORMAT, "dry_run": args.dry_run,
              "started": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
              "budget_s": args.budget, "checks": {}}
    start = time.monotonic()
    only = set(args.only or [c[0] for c in CHECKS])
    for name, check, estimate in CHECKS:
        if name not in only:
            continue
        entry = {"status": "skip"}
        began = time.monotonic()
        if ctx.left() < min(estimate, 20) and name != "environment":
            entry["error"] = f"not run: {ctx.left():.0f}s of the budget left"
        else:
            print(f"[{time.monotonic() - start:6.1f}s] {name} ...", flush=True)
            try:
                entry = {"status": "pass", "figures": check(ctx)}
            except CheckFailed as err:
                entry = {"status": "fail", "error": str(err), "figures": err.figures}
            except subprocess.TimeoutExpired as err:
                entry = {"status": "fail", "error": f"timed out after {err.timeout:.0f}s: {' '.join(map(str, err.cmd[:6]))}"}
            except Exception as err:  # a check's own crash is that check's failure; the others still run
                entry = {"status": "fail", "error": f"{type(err).__name__}: {str(err)[-600:]}"}
        entry["seconds"] = round(time.monotonic() - began, 2)
        result["checks"][name] = entry
        if name == "environment":
            result["environment"] = entry.get("figures", {})
        result["seconds"] = round(time.monotonic() - start, 2)
        result["all_passed"] = all(c["status"] == "pass" for c in result["checks"].values())
        for path in out_paths:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(json.dumps(result, indent=2, default=str) + "\n")
    print(table(result))
    print(f"wrote {', '.join(map(str, out_paths))}")
    return 0 if result["all_passed"] else 1


def merge(args) -> int:
    """The first run with the second's checks in place of its own (a second try of some checks)."""
    first, second = (json.loads(Path(p).read_text()) for p in (args.first, args.second))
    if first.get("dry_run") or second.get("dry_run"):
        raise SystemExit("merge: a dry run's figures are not results")
    merged = {**first, "checks": {**first["checks"], **second["checks"]},
              "tries": [first.get("started"), second.get("started")]}
    if "environment" in second["checks"]:
        merged["environment"] = second["environment"]
    merged["all_passed"] = all(c["status"] == "pass" for c in merged["checks"].values())
    Path(args.out).write_text(json.dumps(merged, indent=2, default=str) + "\n")
    print(table(merged))
    return 0 if merged["all_passed"] else 1


def table(result: dict) -> str:
    rows = [("check", "status", "seconds", "figures")]
    for name, c in result["checks"].items():
        rows.append((name, c["status"], f"{c.get('seconds', 0):.1f}",
                     c.get("error", "")[:100] if c["status"] != "pass" else summary_line(name, c.get("figures"))[:100]))
    widths = [max(len(r[i]) for r in rows) for i in range(4)]
    lines = [" | ".join(cell.ljust(w) for cell, w in zip(r, widths)) for r in rows]
    lines.insert(1, "-+-".join("-" * w for w in widths))
    title = "GPU check (DRY RUN on the CPU: no figure is a measurement)" if result["dry_run"] else "GPU check"
    return f"{title}, {result.get('seconds', 0):.0f}s\n" + "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    pp = sub.add_parser("prepare", help="stage wheels and data into .gpu_carry (here)")
    pp.add_argument("--data-root", default=None)
    sub.add_parser("install", help="install the carried wheels (on the GPU machine)")
    pr = sub.add_parser("run", help="run the checks")
    pr.add_argument("--dry-run", action="store_true", help="every step on the CPU at the smallest size")
    pr.add_argument("--out", default=None, help="the JSON (default benchmarks/results/gpu.json; for a dry run, "
                    "gpu.json in the work folder: a dry run's figures are never results)")
    pr.add_argument("--work", default=None, help="folder for the checks' runs (default: a new temporary one)")
    pr.add_argument("--budget", type=float, default=None, help="seconds for all checks; a check that would start "
                    "with less than its share left is recorded as not run (default 330; dry run 1800)")
    pr.add_argument("--only", nargs="+", choices=[c[0] for c in CHECKS], help="run these checks only")
    pg = sub.add_parser("merge", help="a run plus a second try of some of its checks")
    pg.add_argument("first")
    pg.add_argument("second")
    pg.add_argument("--out", required=True)
    pm = sub.add_parser("memory-worker", help=argparse.SUPPRESS)
    pm.add_argument("--device", default="cuda")
    pm.add_argument("--dry-run", action="store_true")
    args = p.parse_args(argv)
    if args.cmd == "run" and args.budget is None:
        args.budget = 1800 if args.dry_run else 330  # a slow CPU must not cut the dry run short
    if args.cmd == "prepare":
        return prepare(args) or 0
    if args.cmd == "install":
        return install(args) or 0
    if args.cmd == "merge":
        return merge(args)
    if args.cmd == "memory-worker":
        return memory_worker(args) or 0
    return run(args)


if __name__ == "__main__":
    sys.exit(main())
