"""Bring your own model: registries with options models, ``imports:``, ``model: {factory: ...}``.

Each test writes its user module to ``tmp_path`` with names of its own (registries are global
to the process, and a name registers once)."""
import json
import os
import subprocess
import sys
import uuid

import pytest
import torch
import yaml
from pydantic import BaseModel, ConfigDict

from conftest import REPO, run_cli, write
from mmdistill.checkpoint import read_checkpoint
from mmdistill.config import TrainConfig, parse_config
from mmdistill.errors import ConfigError
from mmdistill.optim import OPTIMIZERS
from mmdistill.registry import Registry

torch.set_num_threads(1)

DATA = {"name": "synthetic", "train_size": 120, "test_size": 40}
TRAIN = {"epochs": 1, "batch_size": 32, "progress": False, "val_fraction": 0.2}

ENCODER_MODULE = '''
import torch
from pydantic import BaseModel, ConfigDict
from torch import nn

from mmdistill.models import ENCODERS, FUSIONS


class PoolOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")
    width: int = 8
    grid: int = 2


@ENCODERS.register("pool_{token}", options=PoolOptions)
class PoolEncoder(nn.Module):
    """Average-pool to grid x grid, then one linear layer of ``width`` units."""

    def __init__(self, shape, width=8, grid=2):
        super().__init__()
        self.pool = nn.AdaptiveAvgPool2d(grid)
        self.project = nn.Linear(shape[0] * grid * grid, width)
        self.out_dim = width

    def forward(self, x):
        return torch.relu(self.project(self.pool(x).flatten(1)))


class SumOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")
    dim: int = 8


@FUSIONS.register("sum_{token}", options=SumOptions)
class SumFusion(nn.Module):
    """Project each modality to ``dim`` and sum the present ones."""

    produces_logits = False

    def __init__(self, dims, num_classes, dim=8):
        super().__init__()
        self.project = nn.ModuleDict({{m: nn.Linear(d, dim) for m, d in dims.items()}})
        self.out_dim = dim

    def forward(self, embeddings, present):
        return sum(self.project[m](z) * present[m].unsqueeze(1).to(z.dtype) for m, z in embeddings.items())
'''

FACTORY_MODULE = '''
import math

import torch
from torch import nn


class Net(nn.Module):
    """An MLP over both modalities, flattened: a model mmdistill knows nothing about."""

    def __init__(self, specs, num_classes, hidden):
        super().__init__()
        self.modalities = ["image", "audio"]
        size = sum(math.prod(specs[m].shape) for m in self.modalities)
        self.body = nn.Sequential(nn.Linear(size, hidden), nn.ReLU())
        self.out = nn.Linear(hidden, num_classes)

    def forward(self, batch):
        return self.out(self.body(torch.cat([batch[m].flatten(1) for m in self.modalities], dim=1)))


def build(specs, num_classes, hidden=16):
    return Net(specs, num_classes, hidden)
'''


def token() -> str:
    return uuid.uuid4().hex[:8]


def one_line(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err, err
    return err


# --- the registry ----------------------------------------------------------------------------------
class WidthOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")
    width: int = 4


def test_registry_validates_an_entry_against_its_options_model():
    reg = Registry("widget")
    reg.register("plain", options=WidthOptions)(object)
    reg.register("bare")(object)  # no options model given: read from object's signature (no options)
    assert reg.options("plain") is WidthOptions and reg.options("bare").model_fields == {}
    entry = reg.parse({"type": "plain", "width": 7})
    assert isinstance(entry, WidthOptions) and entry.width == 7 and entry.type == "plain"
    assert entry.model_dump() == {"width": 7, "type": "plain"}
    assert reg.parse(entry) is entry  # already validated
    assert reg.parse({"type": "bare"}).model_dump() == {"type": "bare"}
    with pytest.raises(ValueError, match=r"^widht: unknown key"):
        reg.parse({"type": "plain", "widht": 7})
    with pytest.raises(ValueError, match=r"^width: .*\(got 'wide'\)"):
        reg.parse({"type": "plain", "width": "wide"})
    with pytest.raises(ValueError, match=r"^type: unknown widget 'nope' \(known: bare, plain\)"):
        reg.parse({"type": "nope"})
    with pytest.raises(ValueError, match=r"^type: missing"):
        reg.parse({"width": 3})
    with pytest.raises(TypeError, match="pydantic"):
        reg.register("bad", options=dict)


def test_a_registered_optimiser_is_used_by_name_with_its_options():
    name = f"sgd_{token()}"

    class LionishOptions(BaseModel):
        model_config = ConfigDict(extra="forbid")
        name: str
        lr: float = 0.5

    OPTIMIZERS.register(name, options=LionishOptions)(lambda params, o: torch.optim.SGD(params, lr=o.lr))
    cfg = TrainConfig.model_validate({"optimizer": {"name": name, "lr": 0.25}})
    assert cfg.optimizer.lr == 0.25 and cfg.model_dump()["optimizer"] == {"name": name, "lr": 0.25}
    from mmdistill.distill.engine import build_optimizer

    opt = build_optimizer([torch.nn.Parameter(torch.zeros(1))], cfg.optimizer)
    assert isinstance(opt, torch.optim.SGD) and opt.param_groups[0]["lr"] == 0.25
    with pytest.raises(ConfigError, match=r"train\.optimizer\.momentum: unknown key"):
        parse_config({"data": DATA, "model": {"encoders": {"image": {"type": "mlp"}}},
                      "train": {"optimizer": {"name": name, "momentum": 0.9}}})


# --- imports: and user-registered parts from YAML, through the CLI ----------------------------------------
def user_encoder_configs(tmp_path, tok):
    (tmp_path / "my_models.py").write_text(ENCODER_MODULE.format(token=tok))
    teacher = {"imports": ["./my_models.py"], "seed": 0, "device": "cpu", "data": DATA, "train": TRAIN,
               "model": {"encoders": {"image": {"type": f"pool_{tok}", "width": 12, "grid": 4},
                                      "audio": {"type": f"pool_{tok}", "width": 12}},
                         "fusion": {"type": f"sum_{tok}", "dim": 16}}}
    student = {**teacher, "model": {"encoders": {"audio": {"type": f"pool_{tok}", "width": 4},
                                                 "image": {"type": "conv", "channels": [4]}},
                                    "fusion": {"type": f"sum_{tok}", "dim": 8}},
               "distill": {"teacher": {"checkpoint": "teacher/best.pt"},
                           "terms": [{"name": "kd", "temperature": 2.0},
                                     {"name": "fitnet", "weight": 0.1, "student": "fusion", "teacher": "fusion"}]}}
    return teacher, student


def test_user_encoder_and_fusion_from_imports_distil_end_to_end(tmp_path, capsys):
    tok = token()
    teacher, student = user_encoder_configs(tmp_path, tok)
    assert run_cli("train", write(tmp_path, "teacher.yaml", teacher), "--out", tmp_path / "teacher") == 0
    payload = read_checkpoint(tmp_path / "teacher" / "best.pt")
    assert payload["imports"] == [str((tmp_path / "my_models.py").resolve())]
    assert payload["model_config"]["encoders"]["image"] == {"type": f"pool_{tok}", "width": 12, "grid": 4}
    run = json.loads((tmp_path / "teacher" / "run.json").read_text())
    assert run["config"]["imports"] == payload["imports"]

    assert run_cli("distill", write(tmp_path, "student.yaml", student), "--out", tmp_path / "student") == 0
    summary = json.loads((tmp_path / "student" / "summary.json").read_text())
    assert summary["student"]["extra_params"] > 0  # the fitnet adapter, 8 -> 16
    assert summary["student"]["params"] < summary["teacher"]["params"]
    capsys.readouterr()  # what the runs printed (e.g. their 1-epoch runs' not-converged warning)
    # the student's recorded imports are code the user did not name to evaluate: refused unless trusted
    assert run_cli("evaluate", tmp_path / "student" / "best.pt", "--out", tmp_path / "eval", "--no-cost") == 2
    assert "--trust-code" in one_line(capsys) and not (tmp_path / "eval").exists()
    assert run_cli("evaluate", tmp_path / "student" / "best.pt", "--out", tmp_path / "eval", "--no-cost",
                   "--trust-code") == 0
    again = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert again["accuracy"] == pytest.approx(summary["student"]["accuracy"])

    (tmp_path / "my_models.py").rename(tmp_path / "moved.py")  # a checkpoint needs its recorded modules
    capsys.readouterr()
    assert run_cli("evaluate", tmp_path / "student" / "best.pt", "--out", tmp_path / "eval2", "--no-cost",
                   "--trust-code") == 2
    err = one_line(capsys)
    assert "student/best.pt: its recorded imports[0]" in err and "no such file" in err and "my_models.py" in err


def test_a_typo_in_a_user_entry_options_names_the_key(tmp_path, capsys):
    tok = token()
    teacher, _ = user_encoder_configs(tmp_path, tok)
    teacher["model"]["encoders"]["audio"] = {"type": f"pool_{tok}", "widht": 12}
    assert run_cli("train", write(tmp_path, "t.yaml", teacher), "--out", tmp_path / "run") == 2
    assert "model.encoders.audio.widht: unknown key" in one_line(capsys)
    teacher["model"]["encoders"]["audio"] = {"type": f"pool_{tok}", "width": "wide"}
    teacher["model"]["fusion"] = {"type": f"sum_{tok}"}
    assert run_cli("train", write(tmp_path, "t.yaml", teacher), "--out", tmp_path / "run") == 2
    assert "model.encoders.audio.width: " in one_line(capsys)
    teacher["model"]["encoders"]["audio"] = {"type": f"pool_{tok}"}
    teacher["model"]["fusion"] = {"type": f"sum_{tok}", "dims": 3}
    assert run_cli("train", write(tmp_path, "t.yaml", teacher), "--out", tmp_path / "run") == 2
    assert "model.fusion.dims: unknown key" in one_line(capsys)
    teacher["model"]["fusion"] = {"type": f"sum_{tok}"}
    teacher["model"]["encoders"]["image"] = {"type": "pool_unregistered"}  # the error lists the known ones
    assert run_cli("train", write(tmp_path, "t.yaml", teacher), "--out", tmp_path / "run") == 2
    assert f"model.encoders.image.type: unknown encoder 'pool_unregistered' (known: conv, mlp, " in one_line(capsys)
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("entry, source, culprit", [
    ("nosuch_module_for_mmdistill", None, "imports[0] (nosuch_module_for_mmdistill): no module named "
                                          "'nosuch_module_for_mmdistill'"),
    ("./missing.py", None, "imports[0] (./missing.py): no such file"),
    ("./broken.py", "raise RuntimeError('no GPU here')\n", "imports[0] (./broken.py): importing it raised "
                                                           "RuntimeError: no GPU here"),
    ("./syntax.py", "def f(:\n", "imports[0] (./syntax.py): importing it raised SyntaxError"),
    ("./inner.py", "import nosuch_dependency_of_a_plugin\n", "ModuleNotFoundError: No module named "
                                                             "'nosuch_dependency_of_a_plugin'"),
    ("not a module", None, "imports[0]: 'not a module' is neither"),
])
def test_import_errors_are_one_line_naming_the_entry(tmp_path, capsys, entry, source, culprit):
    if source is not None:
        (tmp_path / entry.removeprefix("./")).write_text(source)
    cfg = {"imports": [entry], "data": DATA, "model": {"encoders": {"image": {"type": "mlp"}}}, "train": TRAIN}
    assert run_cli("train", write(tmp_path, "c.yaml", cfg), "--out", tmp_path / "run") == 2
    assert culprit in one_line(capsys)
    assert not (tmp_path / "run").exists()


def test_only_listed_modules_run_and_a_file_loads_once(tmp_path):
    marker = tmp_path / "ran.txt"
    (tmp_path / "counted.py").write_text(f"with open({str(marker)!r}, 'a') as f:\n    f.write('x')\n")
    (tmp_path / "unlisted.py").write_text("raise SystemExit('must not run')\n")
    cfg = {"imports": ["./counted.py"], "data": DATA, "model": {"encoders": {"image": {"type": "mlp"}}}}
    for _ in range(2):
        parsed = parse_config(cfg, base=tmp_path)
    assert marker.read_text() == "x"
    assert parsed.imports == [str((tmp_path / "counted.py").resolve())]


# --- model: {factory: ...} --------------------------------------------------------------------------
def factory_package(tmp_path, monkeypatch) -> str:
    package = f"byo_pkg_{token()}"
    (tmp_path / package).mkdir()
    (tmp_path / package / "__init__.py").write_text("")
    (tmp_path / package / "nets.py").write_text(FACTORY_MODULE)
    monkeypatch.syspath_prepend(str(tmp_path))
    return package


def test_a_factory_teacher_distils_into_an_mmdistill_student(tmp_path, capsys, monkeypatch):
    package = factory_package(tmp_path, monkeypatch)
    teacher = {"imports": [f"{package}.nets"], "seed": 0, "device": "cpu", "data": DATA, "train": TRAIN,
               "model": {"factory": f"{package}.nets:build", "kwargs": {"hidden": 24}}}
    assert run_cli("train", write(tmp_path, "teacher.yaml", teacher), "--out", tmp_path / "teacher") == 0
    payload = read_checkpoint(tmp_path / "teacher" / "best.pt")
    assert payload["model_config"] == {"factory": f"{package}.nets:build", "kwargs": {"hidden": 24}}
    assert payload["imports"] == [f"{package}.nets"] and "body.0.weight" in payload["state_dict"]

    student = {"seed": 0, "device": "cpu", "data": DATA, "train": TRAIN,
               "model": {"encoders": {"image": {"type": "conv", "channels": [4]},
                                      "audio": {"type": "conv", "channels": [4]}}},
               "distill": {"teacher": {"checkpoint": "teacher/best.pt"},
                           "terms": [{"name": "kd", "temperature": 4.0},
                                     # the factory model declares no feature points: explicit paths
                                     {"name": "fitnet", "weight": 0.1, "student": "fusion", "teacher": "body"}]}}
    capsys.readouterr()  # what the teacher's run printed (e.g. its not-converged warning)
    # the student's config names no code: the teacher's factory runs only with --trust-code
    assert run_cli("distill", write(tmp_path, "student.yaml", student), "--out", tmp_path / "student") == 2
    assert f"model.factory {package}.nets:build" in one_line(capsys) and not (tmp_path / "student").exists()
    assert run_cli("distill", write(tmp_path, "student.yaml", student), "--out", tmp_path / "student",
                   "--trust-code") == 0
    summary = json.loads((tmp_path / "student" / "summary.json").read_text())
    assert summary["teacher"]["params"] == sum(v.numel() for v in payload["state_dict"].values())
    assert summary["student"]["extra_params"] > 0  # the fitnet adapter, 8 -> 24

    # evaluate and export rebuild the factory model from the checkpoint alone
    assert run_cli("evaluate", tmp_path / "teacher" / "best.pt", "--out", tmp_path / "eval", "--trust-code") == 0
    metrics = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert metrics["accuracy"] == pytest.approx(summary["teacher"]["accuracy"])
    assert metrics["macs"] > 0 and metrics["onnx_bytes"] > 0  # cost: MACs and ONNX Runtime, as for any model
    assert run_cli("export", tmp_path / "teacher" / "best.pt", "--out", tmp_path / "export", "--trust-code") == 0
    exported = json.loads((tmp_path / "export" / "model.json").read_text())
    assert exported["model_config"]["factory"] == f"{package}.nets:build"
    assert exported["accuracy"]["onnx"] == pytest.approx(exported["accuracy"]["pytorch"], abs=0.02)


def test_a_fresh_process_reimports_a_checkpoint_s_modules(tmp_path, monkeypatch):
    """evaluate in a new interpreter: the model is rebuilt only because the checkpoint records
    the imports (the factory's package on PYTHONPATH, the user's encoder file by its path)."""
    package = factory_package(tmp_path, monkeypatch)
    tok = token()
    (tmp_path / "my_models.py").write_text(ENCODER_MODULE.format(token=tok))
    cfg = {"imports": [f"{package}.nets", "./my_models.py"], "seed": 0, "device": "cpu", "data": DATA,
           "train": TRAIN, "model": {"encoders": {"audio": {"type": f"pool_{tok}", "width": 4}}}}
    assert run_cli("train", write(tmp_path, "m.yaml", cfg), "--out", tmp_path / "m") == 0
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO / "src"), str(tmp_path)])}
    done = subprocess.run([sys.executable, "-m", "mmdistill", "evaluate", str(tmp_path / "m" / "best.pt"),
                           "--out", str(tmp_path / "eval"), "--no-cost", "--trust-code"], env=env, capture_output=True, text=True,
                          timeout=600)
    assert done.returncode == 0, done.stderr
    summary = json.loads((tmp_path / "m" / "summary.json").read_text())
    metrics = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert metrics["accuracy"] == pytest.approx(summary["model"]["accuracy"])


@pytest.mark.parametrize("model, culprit", [
    ({"factory": "no_colon_here"}, "model.factory: String should match pattern"),
    ({"factory": "nosuch_pkg_for_mmdistill:build"}, "model.factory: no module named 'nosuch_pkg_for_mmdistill'"),
    ({"factory": "json:nosuch"}, "model.factory: module 'json' has no 'nosuch'"),
    ({"factory": "json:dumps"}, "model.factory: json:dumps raised TypeError"),
    ({"factory": "{pkg}.nets:build", "kwargs": {"hidden": 4, "depth": 2}}, "unexpected keyword argument 'depth'"),
    ({"factory": "{pkg}.nets:build", "kwarg": {}}, "model.kwarg: unknown key"),
    ({"factory": "{pkg}.nets:build", "encoders": {}}, "model.encoders: unknown key"),
])
def test_factory_errors_are_one_line(tmp_path, capsys, monkeypatch, model, culprit):
    package = factory_package(tmp_path, monkeypatch)
    model = {k: v.format(pkg=package) if isinstance(v, str) else v for k, v in model.items()}
    cfg = {"imports": [f"{package}.nets"], "data": DATA, "model": model, "train": TRAIN}
    assert run_cli("train", write(tmp_path, "c.yaml", cfg), "--out", tmp_path / "run") == 2
    assert culprit in one_line(capsys)
    assert not (tmp_path / "run").exists()


# --- the packaged recipes ---------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["av_digits_teacher", "av_digits_student"])
def test_configs_recipes_are_the_packaged_ones(name):
    """configs/av_digits_{teacher,student}.yaml are the packaged recipes the demo runs (one copy:
    the configs/ paths point at src/mmdistill/recipes/), so the README's commands and the demo agree."""
    packaged = REPO / "src" / "mmdistill" / "recipes" / f"{name}.yaml"
    config = REPO / "configs" / f"{name}.yaml"
    assert config.read_bytes() == packaged.read_bytes()
    assert yaml.safe_load(config.read_text())["model"]


def test_the_readme_encoder_example_works_as_written(tmp_path):
    """The "Bring your own model" example module, listed in imports:, builds and runs; its typo
    example is the error the README says."""
    import re

    from mmdistill.data import build_data
    from mmdistill.models import build_model

    readme = (REPO / "README.md").read_text()
    section = readme[readme.index("## Bring your own model"):]
    module = next(b for b in re.findall(r"```python\n(.*?)```", section, re.S) if "ENCODERS.register" in b)
    (tmp_path / "my_models.py").write_text(module)
    cfg = parse_config({"imports": ["./my_models.py"], "data": DATA,
                        "model": {"encoders": {"audio": {"type": "pool", "width": 64}}}}, base=tmp_path)
    data = build_data(cfg.data)
    model = build_model(cfg.model, data.specs, data.num_classes, seed=0)
    batch = {"audio": data.train.modalities["audio"][:3]}
    assert model(batch).shape == (3, data.num_classes) and model.encoders["audio"].out_dim == 64
    with pytest.raises(ConfigError, match=r"model\.encoders\.audio\.widht: unknown key"):
        parse_config({"imports": ["./my_models.py"], "data": DATA,
                      "model": {"encoders": {"audio": {"type": "pool", "widht": 64}}}}, base=tmp_path)


def test_user_head_strategy_and_schedule_are_used_by_name_with_their_options():
    from mmdistill.data import build_data
    from mmdistill.distill.ensemble import STRATEGIES, TeacherEnsemble
    from mmdistill.models import HEADS, build_model
    from mmdistill.optim import SCHEDULERS, build_scheduler

    tok = token()

    class ScaleOptions(BaseModel):
        model_config = ConfigDict(extra="forbid")
        scale: float = 1.0

    @HEADS.register(f"scaled_{tok}", options=ScaleOptions)
    def scaled(in_dim, num_classes, scale=1.0):
        return torch.nn.Sequential(torch.nn.Linear(in_dim, num_classes), torch.nn.Hardtanh(-scale, scale))

    @STRATEGIES.register(f"first_{tok}", options=ScaleOptions)
    def first(logits, batch, options):
        w = torch.zeros(logits.shape[1], logits.shape[0])
        w[:, 0] = options["scale"]
        return w

    @SCHEDULERS.register(f"halve_{tok}", options=ScaleOptions)
    def halve(options, epochs):
        return lambda e: options.scale * 0.5 ** e

    cfg = parse_config({
        "data": DATA, "train": {"scheduler": {"name": f"halve_{tok}", "scale": 2.0}},
        "model": {"encoders": {"image": {"type": "mlp", "hidden": [8]}}, "head": {"type": f"scaled_{tok}", "scale": 0.5}},
        "distill": {"teachers": [{"checkpoint": "a.pt"}, {"checkpoint": "b.pt"}],
                    "ensemble": {"strategy": f"first_{tok}", "scale": 1.0}}})
    assert cfg.model_dump()["model"]["head"] == {"type": f"scaled_{tok}", "scale": 0.5}
    data = build_data(cfg.data)
    model = build_model(cfg.model, data.specs, data.num_classes, seed=0)
    logits = model({"image": data.train.modalities["image"][:4] * 100})
    assert logits.abs().max() <= 0.5 and logits.shape == (4, data.num_classes)

    ens = cfg.distill.ensemble
    fusion = TeacherEnsemble(["a", "b"], ens.strategy, options=ens.model_dump(exclude={"strategy"}))
    assert fusion.weights(torch.zeros(2, 3, 5), {}).tolist() == [[1.0, 0.0]] * 3

    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    sched = build_scheduler(opt, cfg.train.scheduler, epochs=3)
    lrs = []
    for _ in range(3):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert lrs == [2.0, 1.0, 0.5]

    with pytest.raises(ConfigError, match=r"distill\.ensemble\.weights: unknown key"):
        parse_config({"data": DATA, "model": {"encoders": {"image": {"type": "mlp"}}},
                      "distill": {"teacher": {"checkpoint": "a.pt"},
                                  "ensemble": {"strategy": f"first_{tok}", "weights": {"a": 1}}}})
    with pytest.raises(ConfigError, match=r"model\.head\.scale: "):
        parse_config({"data": DATA, "model": {"encoders": {"image": {"type": "mlp"}},
                                              "head": {"type": f"scaled_{tok}", "scale": "big"}}})
