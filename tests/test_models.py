"""The multimodal model: encoders, fusions with absent modalities, config errors, parameter counts."""
import pytest
import torch

torch.set_num_threads(1)

from mmdistill.data.dataset import ModalitySpec  # noqa: E402
from mmdistill.errors import ConfigError  # noqa: E402
from mmdistill.models import ConvEncoder, MLPEncoder, build_model, count_parameters  # noqa: E402

K = 3
SPECS = {"image": ModalitySpec("image", "image", (1, 12, 12)),
         "audio": ModalitySpec("audio", "audio", (1, 8, 8)),
         "vector": ModalitySpec("vector", "vector", (6,))}
FUSIONS = [{"type": "concat"}, {"type": "late"}, {"type": "attention", "dim": 5}, {"type": "gated", "dim": 5}]


def model_for(fusion, encoders=None):
    torch.manual_seed(0)
    encoders = encoders or {"image": {"type": "conv", "channels": [4], "dim": 6},
                            "audio": {"type": "conv", "channels": [3]},
                            "vector": {"type": "mlp", "hidden": [7]}}
    return build_model({"encoders": encoders, "fusion": fusion}, SPECS, K).eval()


def make_batch(n=6, seed=1, present=None):
    g = torch.Generator().manual_seed(seed)
    batch = {m: torch.randn((n, *s.shape), generator=g) for m, s in SPECS.items()}
    batch["label"] = torch.zeros(n, dtype=torch.long)
    batch["present"] = {m: torch.ones(n, dtype=torch.bool) for m in SPECS}
    for m, mask in (present or {}).items():
        batch["present"][m] = torch.as_tensor(mask)
    return batch


def embed(model, batch, m):
    return model.encoders[m](batch[m])


@pytest.mark.parametrize("fusion", FUSIONS, ids=lambda f: f["type"])
def test_build_and_forward_every_fusion(fusion):
    model = model_for(fusion)
    assert list(model.encoders) == ["image", "audio", "vector"]
    assert isinstance(model.encoders["image"], ConvEncoder) and isinstance(model.encoders["vector"], MLPEncoder)
    assert model.encoders["image"].out_dim == 6 and model.encoders["audio"].out_dim == 3
    logits = model(make_batch())
    assert logits.shape == (6, K) and torch.isfinite(logits).all()
    model.train()
    logits = model(make_batch())  # batch statistics in train mode
    assert logits.shape == (6, K)
    logits.sum().backward()
    assert all(p.grad is not None for p in model.parameters())


@pytest.mark.parametrize("fusion", FUSIONS, ids=lambda f: f["type"])
def test_absent_values_are_ignored(fusion):
    """A sample's output does not depend on the values of a modality marked absent."""
    model = model_for(fusion)
    absent = torch.tensor([True, False, True, False, False, True])
    batch = make_batch(present={"audio": ~absent})
    other = make_batch(present={"audio": ~absent})
    other["audio"] = torch.randn_like(other["audio"]) * 10
    for m in ("image", "vector"):
        other[m] = batch[m]
    a, b = model(batch), model(other)
    assert torch.isfinite(a).all() and torch.isfinite(b).all()
    torch.testing.assert_close(a[absent], b[absent])
    assert not torch.allclose(a[~absent], b[~absent])


@pytest.mark.parametrize("fusion", FUSIONS, ids=lambda f: f["type"])
def test_modality_missing_from_batch_equals_marked_absent(fusion):
    model = model_for(fusion)
    batch = make_batch(present={"audio": torch.zeros(6, dtype=torch.bool)})
    missing = {k: v for k, v in batch.items() if k != "audio"}
    missing["present"] = {m: p for m, p in batch["present"].items() if m != "audio"}
    torch.testing.assert_close(model(missing), model(batch))
    # a presence dict that does not mention a modality in the batch means present
    no_mask = {k: v for k, v in batch.items() if k != "present"}
    assert torch.isfinite(model(no_mask)).all()
    # modalities the model does not see are ignored
    extra = dict(batch, depth=torch.randn(6, 2))
    torch.testing.assert_close(model(extra), model(batch))


@pytest.mark.parametrize("fusion", FUSIONS, ids=lambda f: f["type"])
def test_all_modalities_absent_for_a_sample(fusion):
    model = model_for(fusion)
    none = torch.tensor([True, False, False, True, False, False])
    batch = make_batch(present={m: ~none for m in SPECS})
    logits = model(batch)
    assert torch.isfinite(logits).all()
    if fusion["type"] == "late":
        expected = torch.zeros(K)  # no modality votes
    else:
        expected = model.head(torch.zeros(1, model.fusion.out_dim))[0]  # the fused vector is zero
    torch.testing.assert_close(logits[none], expected.expand(int(none.sum()), K))
    # a whole batch with nothing present works too
    empty = make_batch(present={m: torch.zeros(6, dtype=torch.bool) for m in SPECS})
    assert torch.isfinite(model(empty)).all()


def test_late_fusion_averages_the_present_modalities():
    model = model_for({"type": "late"})
    assert isinstance(model.head, torch.nn.Identity)
    only_image = torch.tensor([True, False, False, False, False, False])
    batch = make_batch(present={"audio": ~only_image, "vector": ~only_image})
    batch["present"]["vector"][1] = False  # sample 1: image and audio
    logits = model(batch)
    with torch.no_grad():
        per = {m: model.fusion.classifiers[m](embed(model, batch, m)) for m in SPECS}
    torch.testing.assert_close(logits[0], per["image"][0])
    torch.testing.assert_close(logits[1], (per["image"][1] + per["audio"][1]) / 2)
    torch.testing.assert_close(logits[2:], (per["image"][2:] + per["audio"][2:] + per["vector"][2:]) / 3)


def test_attention_with_one_modality_present_takes_it_with_weight_one():
    model = model_for({"type": "attention", "dim": 5})
    only_image = torch.tensor([True, True, False, False, True, False])
    batch = make_batch(present={"audio": ~only_image, "vector": ~only_image})
    logits = model(batch)
    with torch.no_grad():
        z = {m: model.fusion.project[m](embed(model, batch, m)) for m in SPECS}
        alone = model.head(z["image"])
        # with all present: the softmax-weighted sum of the projections
        scores = torch.cat([model.fusion.score(z[m]) for m in SPECS], dim=1)
        weights = torch.softmax(scores, dim=1)
        mixed = model.head(sum(weights[:, i:i + 1] * z[m] for i, m in enumerate(SPECS)))
    torch.testing.assert_close(logits[only_image], alone[only_image])
    torch.testing.assert_close(logits[~only_image], mixed[~only_image])


def test_concat_and_gated_zero_the_absent_embedding():
    absent = torch.tensor([True, False, True, False, True, False])
    batch = make_batch(present={"vector": ~absent})
    keep = (~absent).float().unsqueeze(1)
    concat = model_for({"type": "concat"})
    with torch.no_grad():
        e = [embed(concat, batch, m) for m in ("image", "audio")] + [embed(concat, batch, "vector") * keep]
        expected = concat.head(torch.cat(e, dim=1))
    torch.testing.assert_close(concat(batch), expected)
    gated = model_for({"type": "gated", "dim": 5})
    with torch.no_grad():
        z = torch.stack([gated.fusion.project[m](embed(gated, batch, m)) for m in SPECS], dim=1)
        z[:, 2] *= keep
        gates = torch.sigmoid(gated.fusion.gate(z.flatten(1))).view_as(z)
        expected = gated.head((gates * z).sum(1))
    torch.testing.assert_close(gated(batch), expected)


def test_batch_without_any_model_modality_is_an_error():
    model = model_for({"type": "concat"})
    with pytest.raises(ValueError, match="none of the model's modalities"):
        model({"label": torch.zeros(2, dtype=torch.long), "depth": torch.zeros(2, 3)})


# --- config errors ----------------------------------------------------------------------------------
@pytest.mark.parametrize("cfg, key", [
    ({"encoders": {"depth": {"type": "mlp"}}}, "model.encoders.depth"),
    ({"encoders": {"image": {"type": "conv"}}, "fusion": {"type": "late"}, "head": {"hidden": [8]}},
     "model.head.hidden"),
    ({"encoders": {"image": {"type": "conv", "chanels": [4]}}}, "model.encoders.image.chanels"),
    ({"encoders": {"image": {"type": "transformer"}}}, "model.encoders.image"),
    ({"encoders": {"image": {"type": "conv", "channels": [0]}}}, "model.encoders.image.channels"),
    ({"encoders": {}}, "model.encoders"),
    ({"encoders": {"image": {"type": "conv"}}, "fusion": {"type": "attention", "dim": -1}}, "model.fusion.dim"),
])
def test_config_errors_name_the_key(cfg, key):
    with pytest.raises(ConfigError) as err:
        build_model(cfg, SPECS, K)
    assert str(err.value).startswith(key), str(err.value)


def test_missing_modality_error_lists_the_data_modalities():
    with pytest.raises(ConfigError, match="has image, audio, vector"):
        build_model({"encoders": {"depth": {"type": "mlp"}}}, SPECS, K)


# --- parameter counts ---------------------------------------------------------------------------------
def test_parameter_count_by_hand():
    specs = {"image": ModalitySpec("image", "image", (1, 28, 28)), "v": ModalitySpec("v", "vector", (16,))}
    enc = {"image": {"type": "conv", "channels": [4]}, "v": {"type": "mlp", "hidden": [8]}}
    conv = 1 * 4 * 3 * 3 + 2 * 4      # conv3x3 without bias + BatchNorm weight and bias (running stats are buffers)
    mlp = 16 * 8 + 8
    assert count_parameters(build_model({"encoders": enc}, specs, 3)) == conv + mlp + (4 + 8) * 3 + 3
    late = build_model({"encoders": enc, "fusion": {"type": "late"}}, specs, 3)
    assert count_parameters(late) == conv + mlp + (4 * 3 + 3) + (8 * 3 + 3)
    attention = build_model({"encoders": enc, "fusion": {"type": "attention", "dim": 5}}, specs, 3)
    projections = (4 * 5 + 5) + (8 * 5 + 5)
    assert count_parameters(attention) == conv + mlp + projections + (5 + 1) + (5 * 3 + 3)
    gated = build_model({"encoders": enc, "fusion": {"type": "gated", "dim": 5}, "head": {"hidden": [7]}}, specs, 3)
    assert count_parameters(gated) == conv + mlp + projections + (10 * 10 + 10) + (5 * 7 + 7) + (7 * 3 + 3)
    projected = build_model({"encoders": {"image": {"type": "conv", "channels": [4, 6], "dim": 10}}}, specs, 3)
    conv2 = conv + 4 * 6 * 9 + 2 * 6
    assert count_parameters(projected) == conv2 + (6 * 10 + 10) + (10 * 3 + 3)
    # freezing is seen by trainable_only
    gated.encoders.requires_grad_(False)
    assert count_parameters(gated, trainable_only=True) == count_parameters(gated) - conv - mlp


def test_build_model_seed_fixes_the_initial_weights_and_spares_the_global_rng():
    from mmdistill.data.dataset import ModalitySpec

    specs = {"image": ModalitySpec("image", "image", (1, 8, 8))}
    cfg = {"encoders": {"image": {"type": "conv", "channels": [4]}}}
    state = torch.random.get_rng_state()
    a, b, c = (build_model(cfg, specs, 3, seed=s).state_dict() for s in (0, 0, 1))
    assert torch.equal(torch.random.get_rng_state(), state)
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not all(torch.equal(a[k], c[k]) for k in a)


def test_strided_stem_and_separable_blocks():
    """stride 2 halves the first map; separable blocks cost depthwise 3x3 + pointwise 1x1 weights."""
    shape = (1, 28, 28)
    plain = ConvEncoder(shape, channels=[4, 6])
    strided = ConvEncoder(shape, channels=[4, 6], stride=2)
    separable = ConvEncoder(shape, channels=[4, 6], separable=True)
    x = torch.randn(2, *shape)
    assert plain.features(x).shape == (2, 6, 7, 7)
    assert strided.features(x).shape == (2, 6, 3, 3)
    bn = 2 * 4 + 2 * 6
    assert count_parameters(plain) == 9 * 4 + 4 * 6 * 9 + bn
    assert count_parameters(strided) == count_parameters(plain)
    assert count_parameters(separable) == 9 * 4 + (4 * 9 + 4 * 6) + bn
    assert separable(x).shape == (2, 6)
    with pytest.raises(ConfigError, match="model.encoders.image.stride"):
        build_model({"encoders": {"image": {"type": "conv", "stride": 3}}}, SPECS, K)
