"""The loss registry: option validation, user-defined losses, and a smoke test of every registered loss."""
import pytest
import torch

from mmdistill.errors import ConfigError
from mmdistill.losses import LOSSES, DistillationLoss, build_loss, register_loss

torch.set_num_threads(1)

EXPECTED = {
    "mse", "kd", "dkd", "dist",
    "fitnet", "cosine", "at", "nst", "vid",
    "sp", "rkd", "rkd_distance", "rkd_angle", "pkt", "cc",
    "crd",
}
ALL = sorted(LOSSES)


def test_catalogue_is_registered():
    assert EXPECTED <= set(ALL)


@pytest.mark.parametrize("name", ALL)
def test_description_and_inputs(name):
    cls = LOSSES.get(name)
    assert cls.describe() and cls.inputs in ("logits", "features")


def test_unknown_option_names_the_key():
    with pytest.raises(ConfigError, match=r"^distill\.loss\.temperatur: unknown key \(loss 'kd' takes: temperature\)"):
        build_loss("kd", {"temperatur": 2.0}, where="distill.loss")


def test_wrong_type_names_the_key():
    with pytest.raises(ConfigError, match=r"^loss\.temperature: "):
        build_loss("kd", {"temperature": "hot"})
    with pytest.raises(ConfigError, match=r"^loss\.p_order: "):
        build_loss("cc", {"p_order": 2.5})
    with pytest.raises(ConfigError, match=r"^loss\.feat_dim: "):
        build_loss("crd", {"feat_dim": [1]})


def test_invalid_value_is_a_config_error():
    with pytest.raises(ConfigError, match=r"temperature must be in \[0.001, 1000\]"):
        build_loss("dkd", {"temperature": 0})


def test_unknown_loss_is_a_config_error():
    with pytest.raises(ConfigError, match="unknown loss 'nope'"):
        build_loss("nope")


def test_options_are_coerced():
    assert build_loss("kd", {"temperature": 2}).temperature == 2.0
    assert build_loss("vid", {"hidden_channels": None}).hidden_channels is None


@pytest.fixture
def user_loss_name():
    name = "test_user_cosine"
    yield name
    LOSSES._items.pop(name, None)


def test_user_defined_loss_is_buildable(user_loss_name):
    @register_loss(user_loss_name)
    class Cosine(DistillationLoss):
        """1 - cos(student, teacher), averaged over the batch."""

        inputs = "features"

        def __init__(self, scale: float = 1.0):
            super().__init__()
            self.scale = scale

        def forward(self, student, teacher, *, target=None, index=None):
            cos = torch.nn.functional.cosine_similarity(student.flatten(1), teacher.flatten(1))
            return self.scale * (1 - cos).mean()

    loss = build_loss(user_loss_name, {"scale": 2})
    assert isinstance(loss, Cosine) and loss.scale == 2.0
    assert loss(torch.ones(2, 3), -torch.ones(2, 3)).item() == pytest.approx(4.0)
    with pytest.raises(ConfigError, match="scale"):
        build_loss(user_loss_name, {"scale": "x"})


# --- every registered loss --------------------------------------------------------------------

def make_inputs(name, batch, kind, constant=None):
    """(student, teacher, target, index, num_samples) suited to the loss ``name``."""
    g = torch.Generator().manual_seed(3)
    cls = LOSSES.get(name)
    if cls.inputs == "logits":
        s_shape = t_shape = (batch, 5)
    elif name in ("fitnet", "cosine"):  # element-wise losses: equal shapes (the engine's adapter maps them)
        s_shape = t_shape = (batch, 3, 2, 2) if kind == "maps" else (batch, 6)
    else:
        s_shape, t_shape = ((batch, 3, 4, 4), (batch, 4, 2, 2)) if kind == "maps" else ((batch, 6), (batch, 8))
    if constant is None:
        s, t = torch.randn(*s_shape, generator=g), torch.randn(*t_shape, generator=g)
    else:
        s, t = torch.full(s_shape, constant), torch.full(t_shape, constant)
    target = torch.arange(batch) % 5
    index = torch.arange(batch)
    return s, t, target, index, 2 * batch


def bind_kwargs(loss, num_samples):
    """The training labels for losses that need them, consistent with make_inputs' targets."""
    return {"labels": torch.arange(num_samples) % 5} if loss.needs_labels else {}


def run(name, s, t, target, index, num_samples):
    loss = build_loss(name)
    loss.bind(s.shape, t.shape, num_samples, **bind_kwargs(loss, num_samples))
    s = s.clone().requires_grad_(True)
    out = loss(s, t, target=target, index=index)
    out.backward()
    return out, s.grad


def kinds(name):
    return ["vectors"] if LOSSES.get(name).inputs == "logits" else ["vectors", "maps"]


NAME_KIND = [(name, kind) for name in ALL for kind in kinds(name)]


@pytest.mark.parametrize("name,kind", NAME_KIND)
def test_finite_scalar_with_gradient(name, kind):
    out, grad = run(name, *make_inputs(name, 4, kind))
    assert out.dim() == 0 and torch.isfinite(out)
    assert grad is not None and torch.isfinite(grad).all() and grad.abs().sum() > 0


@pytest.mark.parametrize("name,kind", NAME_KIND)
def test_float64_module(name, kind):
    s, t, target, index, n = make_inputs(name, 4, kind)
    loss = build_loss(name)
    loss.bind(s.shape, t.shape, n, **bind_kwargs(loss, n))
    loss.double()
    out = loss(s.double(), t.double(), target=target, index=index)
    assert out.dtype == torch.float64 and torch.isfinite(out)


@pytest.mark.parametrize("constant", [0.0, 1.0])
@pytest.mark.parametrize("batch", [1, 2])
@pytest.mark.parametrize("name", ALL)
def test_tiny_batches_and_constant_features_stay_finite(name, batch, constant):
    for kind in kinds(name):
        for const in (None, constant):
            out, grad = run(name, *make_inputs(name, batch, kind, const))
            assert torch.isfinite(out), (kind, const)
            assert grad is None or torch.isfinite(grad).all(), (kind, const)
