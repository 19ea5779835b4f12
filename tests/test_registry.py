"""The registry contract shared by every registry: one way to register (options read from the
builder's signature unless given), one validation path whose errors name the key, and ``mmdistill
list``, which shows every registry's entries with their options."""
from pathlib import Path

import pytest
import torch
from pydantic import BaseModel, ConfigDict, Field
from torch import nn

from conftest import run_cli, write
from mmdistill.errors import ConfigError
from mmdistill.registry import Registry

torch.set_num_threads(1)


class Widget(nn.Module):
    def __init__(self, shape, width: int = 4, scale: float = 1.0, tags=()):
        super().__init__()
        self.shape, self.width, self.scale, self.tags = shape, width, scale, tags


def test_keyword_options_are_read_from_the_constructor_after_the_callers_arguments():
    reg = Registry("widget", builder_args=1)
    reg.register("w")(Widget)
    assert reg.option_names("w") == ["width", "scale", "tags"]  # ``shape`` is the caller's
    entry = reg.parse({"type": "w", "width": 7})
    assert (entry.type, entry.width, entry.scale) == ("w", 7, 1.0)
    assert reg.validate("w", {"scale": 2}).scale == 2.0  # coerced to the annotation
    with pytest.raises(ValueError, match=r"^width: .*\(got 'wide'\)"):
        reg.validate("w", {"width": "wide"})
    with pytest.raises(ValueError, match=r"^widht: unknown key \(widget 'w' takes: width, scale, tags\)$"):
        reg.parse({"type": "w", "widht": 3})


def test_a_given_options_model_wins_over_the_signature():
    class Strict(BaseModel):
        model_config = ConfigDict(extra="forbid")
        width: int = Field(4, gt=0)

    reg = Registry("widget", builder_args=1)
    reg.register("w", Strict)(Widget)
    assert reg.options("w") is Strict
    with pytest.raises(ValueError, match=r"^width: "):
        reg.validate("w", {"width": 0})


def test_an_options_argument_is_read_from_its_annotation():
    class SizeOptions(BaseModel):
        model_config = ConfigDict(extra="forbid")
        size: int = 3

    reg = Registry("source", key="name", options_arg=1)

    @reg.register("sized")
    def build(root, options: SizeOptions, seed: int):
        return options.size

    assert reg.options("sized") is SizeOptions
    assert reg.get("sized")(None, reg.validate("sized", {"size": 5}), 0) == 5
    with pytest.raises(TypeError, match=r"annotate parameter 'options' with its pydantic options model"):
        reg.register("bare")(lambda root, options, seed: None)
    assert "bare" not in reg


def test_validate_with_where_is_a_config_error_naming_the_full_key():
    reg = Registry("widget", key="name", builder_args=1)
    reg.register("w")(Widget)
    with pytest.raises(ConfigError, match=r"^model\.parts\[0\]\.scal: unknown key \(widget 'w' takes"):
        reg.validate("w", {"scal": 1}, where="model.parts[0]")
    with pytest.raises(ConfigError, match=r"^part\.name: unknown widget 'x' \(known: w\)$"):
        reg.validate("x", {}, where="part")


def test_base_class_is_enforced_and_names_are_unique():
    reg = Registry("widget", builder_args=1, base=nn.Module)
    with pytest.raises(TypeError, match=r"widget 'f': expected a Module subclass"):
        reg.register("f")(lambda shape: None)
    reg.register("w")(Widget)
    with pytest.raises(ValueError, match="already registered"):
        reg.register("w")(nn.Identity)
    reg.unregister("w")
    reg.register("w")(nn.Identity)
    assert reg.get("w") is nn.Identity


def test_library_registries_share_the_contract():
    """Losses, datasets and model kinds validate through their registry (no copies of their own)."""
    from mmdistill.config import parse_config
    from mmdistill.data import DATASETS
    from mmdistill.losses import LOSSES
    from mmdistill.models import MODEL_KINDS

    assert LOSSES.options("kd").model_fields["temperature"].default == 4.0
    assert DATASETS.options("synthetic").__name__ == "SyntheticOptions"  # from the builder's annotation
    assert MODEL_KINDS.get("hf").__module__ == "mmdistill.models.hf"  # registered where it is defined
    base = {"data": {"name": "synthetic", "train_size": 40, "test_size": 20},
            "model": {"encoders": {"image": {"type": "mlp"}}}}
    for raw, key in ((base | {"data": {"name": "synthetic", "trian_size": 4}}, r"data\.trian_size"),
                     (base | {"model": {"factory": "a.b:c", "kwarg": {}}}, r"model\.kwarg"),
                     (base | {"distill": {"teacher": {"checkpoint": "t.pt"},
                                          "terms": [{"name": "kd", "temprature": 2}]}},
                      r"distill\.terms\[0\]\.temprature")):
        with pytest.raises(ConfigError, match=rf"{key}: unknown key"):
            parse_config(raw)


# --- mmdistill list --------------------------------------------------------------------------------
@pytest.fixture(autouse=True)
def _wide_console(monkeypatch):
    """Table cells on one line each, so an option and its default are never wrapped apart."""
    from mmdistill import cli

    monkeypatch.setattr(cli.console, "width", 400)


def test_list_shows_every_registry_with_options(capsys):
    assert run_cli("list") == 0
    out = capsys.readouterr().out
    for group in ("losses", "encoders", "fusions", "heads", "models", "datasets", "optimisers", "schedulers",
                  "strategies"):
        assert group in out
    assert "temperature=4.0" in out and "train_size=2000" in out and "channels=[32, 64]" in out


def test_list_one_registry(capsys):
    assert run_cli("list", "models") == 0
    out = capsys.readouterr().out
    assert "multimodal" in out and "timm" in out and "temperature" not in out


def test_list_refuses_an_unknown_registry(capsys):
    assert run_cli("list", "lossez") == 2
    assert "'lossez' is not a registry" in capsys.readouterr().err


def test_list_with_a_config_shows_its_plugins(tmp_path, capsys):
    from mmdistill.models import ENCODERS

    (tmp_path / "my_enc.py").write_text(
        "from torch import nn\nfrom mmdistill.models import ENCODERS\n\n"
        "@ENCODERS.register('test_list_flat')\nclass Flat(nn.Flatten):\n"
        "    \"\"\"Flatten the input.\"\"\"\n    def __init__(self, shape, depth: int = 2):\n"
        "        super().__init__()\n        self.out_dim = depth\n")
    cfg = write(tmp_path, "c.yaml", {"imports": ["my_enc.py"], "data": {"name": "synthetic"},
                                     "model": {"encoders": {"image": {"type": "test_list_flat"}}}})
    try:
        assert "test_list_flat" not in ENCODERS
        assert run_cli("list", "encoders", "--config", cfg) == 0
        out = capsys.readouterr().out
        assert "test_list_flat" in out and "depth=2" in out and "Flatten the input." in out
    finally:
        ENCODERS.unregister("test_list_flat")
