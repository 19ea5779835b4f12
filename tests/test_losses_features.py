"""Feature losses (fitnet, cosine, at, nst, vid) against independent loop references and their invariances."""
import math

import pytest
import torch
import torch.nn.functional as F

from mmdistill.losses import build_loss

torch.set_num_threads(1)


def rand(*shape, seed=0, scale=1.0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(*shape, generator=g, dtype=torch.float64) * scale


# --- fitnet -----------------------------------------------------------------------------------

def test_fitnet_hand_value():
    assert build_loss("fitnet")(torch.tensor([[1.0, 2.0]]), torch.zeros(1, 2)).item() == pytest.approx(2.5)


def test_fitnet_loop():
    s, t = rand(2, 3, 2, 2, seed=1), rand(2, 3, 2, 2, seed=2)
    flat = [(a - b) ** 2 for a, b in zip(s.flatten().tolist(), t.flatten().tolist())]
    assert build_loss("fitnet")(s, t).item() == pytest.approx(sum(flat) / len(flat), rel=1e-12)


def test_fitnet_rejects_shape_mismatch():
    with pytest.raises(ValueError, match="same shape"):
        build_loss("fitnet")(torch.zeros(2, 3), torch.zeros(2, 4))


# --- cosine -----------------------------------------------------------------------------------

def test_cosine_matches_torch_cosine_embedding_loss():
    """Against an independent reference: torch's CosineEmbeddingLoss with target +1 (1 - cos, batch mean)."""
    s, t = rand(5, 7, seed=3), rand(5, 7, seed=4)
    reference = torch.nn.CosineEmbeddingLoss()(s, t, torch.ones(5, dtype=torch.float64))
    assert build_loss("cosine")(s, t).item() == pytest.approx(reference.item(), rel=1e-12)


def test_cosine_loop_and_hand_values():
    s, t = rand(3, 2, 2, seed=5), rand(3, 2, 2, seed=6)
    values = []
    for a, b in zip(s.flatten(1).tolist(), t.flatten(1).tolist()):
        dot = sum(x * y for x, y in zip(a, b))
        values.append(1 - dot / (math.sqrt(sum(x * x for x in a)) * math.sqrt(sum(y * y for y in b))))
    assert build_loss("cosine")(s, t).item() == pytest.approx(sum(values) / len(values), rel=1e-12)
    e = torch.tensor([[1.0, 0.0]])
    assert build_loss("cosine")(e, torch.tensor([[0.0, 3.0]])).item() == pytest.approx(1.0)   # orthogonal
    assert build_loss("cosine")(e, torch.tensor([[-2.0, 0.0]])).item() == pytest.approx(2.0)  # opposite


def test_cosine_is_half_the_mse_of_normalised_embeddings_and_ignores_scale():
    s, t = rand(4, 6, seed=7), rand(4, 6, seed=8)
    half_mse = ((F.normalize(s, dim=1) - F.normalize(t, dim=1)) ** 2).sum(1).mean() / 2
    loss = build_loss("cosine")
    assert loss(s, t).item() == pytest.approx(half_mse.item(), rel=1e-10)
    assert loss(3 * s, 0.5 * t).item() == pytest.approx(loss(s, t).item(), rel=1e-10)
    assert loss(s, s).item() == pytest.approx(0.0, abs=1e-12)


def test_cosine_rejects_size_mismatch_and_bad_eps():
    with pytest.raises(ValueError, match="same size"):
        build_loss("cosine")(torch.zeros(2, 3), torch.zeros(2, 4))
    from mmdistill.errors import ConfigError
    with pytest.raises(ConfigError, match="eps"):
        build_loss("cosine", {"eps": 0.0})


# --- at ---------------------------------------------------------------------------------------

def at_reference(s, t, p=2.0):
    """Attention with a *sum* over channels, normalised by a loop; mean squared difference."""
    def attention(x):  # x: [C, positions] as lists
        a = [sum(abs(x[c][i]) ** p for c in range(len(x))) for i in range(len(x[0]))]
        n = math.sqrt(sum(v * v for v in a))
        return [v / n for v in a]

    total, count = 0.0, 0
    for b in range(s.shape[0]):
        qs = attention(s[b].flatten(1).tolist())
        qt = attention(t[b].flatten(1).tolist())
        total += sum((x - y) ** 2 for x, y in zip(qs, qt))
        count += len(qs)
    return total / count


@pytest.mark.parametrize("p", [2.0, 3.0])
def test_at_loop_maps(p):
    s, t = rand(2, 3, 3, 3, seed=1), rand(2, 5, 3, 3, seed=2)  # different channel counts
    assert build_loss("at", {"p": p})(s, t).item() == pytest.approx(at_reference(s, t, p), rel=1e-10)


def test_at_loop_sequences_and_vectors():
    s, t = rand(2, 3, 6, seed=1), rand(2, 4, 6, seed=2)
    assert build_loss("at")(s, t).item() == pytest.approx(at_reference(s, t), rel=1e-10)
    v, w = rand(3, 5, seed=3), rand(3, 5, seed=4)  # a vector is one channel over D positions
    assert build_loss("at")(v, w).item() == pytest.approx(at_reference(v[:, None], w[:, None]), rel=1e-10)


def test_at_invariant_to_channel_count():
    s, t = rand(2, 3, 4, 4, seed=1), rand(2, 2, 4, 4, seed=2)
    loss = build_loss("at")
    torch.testing.assert_close(loss(torch.cat([s, s, s], dim=1), t), loss(s, t))
    torch.testing.assert_close(loss(s, torch.cat([t, t], dim=1)), loss(s, t))


def test_at_pools_the_larger_map():
    s, t = rand(2, 3, 4, 4, seed=1), rand(2, 3, 2, 2, seed=2)
    loss = build_loss("at")
    torch.testing.assert_close(loss(s, t), loss(F.avg_pool2d(s, 2), t))
    torch.testing.assert_close(loss(t, s), loss(t, F.avg_pool2d(s, 2)))
    q, r = rand(2, 3, 8, seed=3), rand(2, 3, 4, seed=4)
    torch.testing.assert_close(loss(q, r), loss(F.avg_pool1d(q, 2), r))


def test_at_equal_maps_is_zero():
    s = rand(2, 3, 4, 4)
    assert build_loss("at")(s, s.clone()).item() == 0.0


# --- nst --------------------------------------------------------------------------------------

def nst_reference(s, t):
    def channels(x):
        rows = x.flatten(1).tolist()
        return [[v / math.sqrt(sum(u * u for u in r)) for v in r] for r in rows]

    def k(a, b):
        return sum(x * y for x, y in zip(a, b)) ** 2

    total = 0.0
    for b in range(s.shape[0]):
        fs, ft = channels(s[b]), channels(t[b])
        tt = sum(k(a, c) for a in ft for c in ft) / len(ft) ** 2
        ss = sum(k(a, c) for a in fs for c in fs) / len(fs) ** 2
        st = sum(k(a, c) for a in ft for c in fs) / (len(ft) * len(fs))
        total += tt + ss - 2 * st
    return total / s.shape[0]


def test_nst_loop():
    s, t = rand(2, 3, 2, 3, seed=1), rand(2, 4, 2, 3, seed=2)
    got = build_loss("nst")(s, t).item()
    assert got == pytest.approx(nst_reference(s, t), rel=1e-10)
    assert got > 0


def test_nst_equal_is_zero_and_pools():
    s = rand(2, 3, 4, 4, seed=1)
    assert abs(build_loss("nst")(s, s.clone()).item()) < 1e-12
    t = rand(2, 2, 2, 2, seed=2)
    torch.testing.assert_close(build_loss("nst")(s, t), build_loss("nst")(F.avg_pool2d(s, 2), t))


def test_nst_dead_channel_is_finite():
    s = rand(2, 3, 2, 2, seed=1).float()
    s[:, 1] = 0  # a ReLU channel that never fires
    s.requires_grad_(True)
    loss = build_loss("nst")(s, rand(2, 2, 2, 2, seed=2).float())
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(s.grad).all()


# --- vid --------------------------------------------------------------------------------------

def vid_reference(loss, s, t):
    """Regressor as 1x1 convolutions with the same weights; NLL summed in loops."""
    w = [m.weight for m in loss.regressor if isinstance(m, torch.nn.Linear)]
    h = s
    for i, weight in enumerate(w):
        h = F.conv2d(h, weight[:, :, None, None])
        if i < len(w) - 1:
            h = F.relu(h)
    var = [math.log1p(math.exp(a)) + loss.eps for a in loss.log_scale.tolist()]
    total, count = 0.0, 0
    B, C, H, W = t.shape
    for b in range(B):
        for c in range(C):
            for y in range(H):
                for x in range(W):
                    d = t[b, c, y, x].item() - h[b, c, y, x].item()
                    total += 0.5 * (d * d / var[c] + math.log(var[c]))
                    count += 1
    return total / count


def test_vid_initial_variance_and_loop():
    s, t = rand(2, 3, 2, 2, seed=1), rand(2, 4, 2, 2, seed=2)
    loss = build_loss("vid", {"init_pred_var": 3.0})
    loss.bind(s.shape, t.shape, 10)
    loss.double()
    var = F.softplus(loss.log_scale) + loss.eps
    torch.testing.assert_close(var, torch.full((4,), 3.0, dtype=torch.float64))
    with torch.no_grad():
        loss.log_scale.add_(torch.tensor([0.1, -0.2, 0.3, 0.0], dtype=torch.float64))
    assert loss(s, t).item() == pytest.approx(vid_reference(loss, s, t), rel=1e-10)


def test_vid_vectors_and_pooling():
    loss = build_loss("vid", {"hidden_channels": 5})
    s, t = rand(3, 6, seed=1), rand(3, 4, seed=2)
    loss.bind(s.shape, t.shape, 10)
    loss.double()
    got = loss(s, t).item()
    assert got == pytest.approx(vid_reference(loss, s[:, :, None, None], t[:, :, None, None]), rel=1e-10)
    m, n = rand(2, 6, 4, 4, seed=3), rand(2, 4, 2, 2, seed=4)
    torch.testing.assert_close(loss(m, n), loss(F.avg_pool2d(m, 2), n))


def test_vid_trains_variance_and_regressor():
    s, t = rand(2, 3, 2, 2, seed=1).float().requires_grad_(True), rand(2, 4, 2, 2, seed=2).float()
    loss = build_loss("vid")
    loss.bind(s.shape, t.shape, 10)
    loss(s, t).backward()
    assert s.grad is not None and loss.log_scale.grad is not None
    assert all(p.grad is not None for p in loss.regressor.parameters())


def test_vid_needs_bind():
    with pytest.raises(RuntimeError, match="bind"):
        build_loss("vid")(torch.zeros(2, 3), torch.zeros(2, 3))
