"""Relational losses (sp, rkd, rkd_distance, rkd_angle, pkt, cc): loop references and invariances."""
import math

import pytest
import torch

from mmdistill.losses import build_loss

torch.set_num_threads(1)


def rand(*shape, seed=0, scale=1.0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(*shape, generator=g, dtype=torch.float64) * scale


def rows(x):
    return x.flatten(1).tolist()


def dot(a, b):
    return sum(x * y for x, y in zip(a, b))


def norm(a):
    return math.sqrt(dot(a, a))


def huber(x):
    return 0.5 * x * x if abs(x) < 1 else abs(x) - 0.5


@pytest.fixture
def feats():
    return rand(4, 3, seed=1), rand(4, 5, seed=2)


# --- sp ---------------------------------------------------------------------------------------

def sp_reference(s, t):
    def gram(x):
        g = [[dot(a, b) for b in x] for a in x]
        return [[v / norm(r) for v in r] for r in g]

    gs, gt = gram(rows(s)), gram(rows(t))
    b = len(gs)
    return sum((gt[i][j] - gs[i][j]) ** 2 for i in range(b) for j in range(b)) / b**2


def test_sp_loop(feats):
    s, t = feats
    assert build_loss("sp")(s, t).item() == pytest.approx(sp_reference(s, t), rel=1e-10)
    m = rand(3, 2, 2, 2, seed=3)  # maps are flattened
    assert build_loss("sp")(m, t[:3]).item() == pytest.approx(sp_reference(m, t[:3]), rel=1e-10)


def test_sp_scale_invariant(feats):
    s, t = feats
    loss = build_loss("sp")
    torch.testing.assert_close(loss(7.5 * s, t), loss(s, t))
    torch.testing.assert_close(loss(s, 0.01 * t), loss(s, t))


# --- rkd --------------------------------------------------------------------------------------

def psi_d(x):
    x = rows(x)
    b = len(x)
    d = [[norm([u - v for u, v in zip(x[i], x[j])]) if i != j else 0.0 for j in range(b)] for i in range(b)]
    mu = sum(d[i][j] for i in range(b) for j in range(b) if i != j) / (b * (b - 1))
    return [[v / mu for v in r] for r in d]


def rkd_distance_reference(s, t):
    ds, dt = psi_d(s), psi_d(t)
    b = len(ds)
    return sum(huber(ds[i][j] - dt[i][j]) for i in range(b) for j in range(b)) / b**2


def psi_a(x):
    """cos of the angle at x[j] between x[i] and x[k]; 0 when a side is degenerate."""
    x = rows(x)
    b = len(x)
    out = {}
    for i in range(b):
        for j in range(b):
            for k in range(b):
                if i == j or k == j:
                    out[i, j, k] = 0.0
                    continue
                e1 = [u - v for u, v in zip(x[i], x[j])]
                e2 = [u - v for u, v in zip(x[k], x[j])]
                out[i, j, k] = dot(e1, e2) / (norm(e1) * norm(e2))
    return out


def rkd_angle_reference(s, t):
    a_s, a_t = psi_a(s), psi_a(t)
    return sum(huber(a_s[key] - a_t[key]) for key in a_s) / len(a_s)


def test_rkd_distance_loop(feats):
    s, t = feats
    ref = rkd_distance_reference(s, t)
    assert build_loss("rkd_distance")(s, t).item() == pytest.approx(ref, rel=1e-9)
    big = rand(4, 3, seed=5, scale=10.0)  # |difference| > 1: the linear branch of the Huber loss
    assert build_loss("rkd_distance")(big, t).item() == pytest.approx(rkd_distance_reference(big, t), rel=1e-9)


def test_rkd_angle_loop(feats):
    s, t = feats
    assert build_loss("rkd_angle")(s, t).item() == pytest.approx(rkd_angle_reference(s, t), rel=1e-9)


def test_rkd_weights(feats):
    s, t = feats
    ref = 25 * rkd_distance_reference(s, t) + 50 * rkd_angle_reference(s, t)
    assert build_loss("rkd")(s, t).item() == pytest.approx(ref, rel=1e-9)
    ref = 2 * rkd_distance_reference(s, t)
    assert build_loss("rkd", {"distance_weight": 2, "angle_weight": 0})(s, t).item() == pytest.approx(ref, rel=1e-9)


@pytest.mark.parametrize("name", ["rkd", "rkd_distance", "rkd_angle"])
def test_rkd_scale_invariant(feats, name):
    s, t = feats
    loss = build_loss(name)
    base = loss(s, t)
    assert base.item() > 0
    torch.testing.assert_close(loss(3.7 * s, t), base)
    torch.testing.assert_close(loss(s, 0.2 * t), base)
    torch.testing.assert_close(loss(s + 5.0, t), base)  # and to translation


def test_rkd_no_gradient_to_teacher(feats):
    s, t = feats
    t = t.clone().requires_grad_(True)
    s = s.clone().requires_grad_(True)
    build_loss("rkd")(s, t).backward()
    assert s.grad is not None and t.grad is None


# --- pkt --------------------------------------------------------------------------------------

def pkt_reference(s, t, eps=1e-7):
    def conditional(x):
        x = [[v / (norm(r) + eps) for v in r] for r in rows(x)]
        k = [[(dot(a, b) + 1) / 2 for b in x] for a in x]
        return [[v / sum(r) for v in r] for r in k]

    q, p = conditional(s), conditional(t)
    b = len(p)
    return sum(p[i][j] * math.log((p[i][j] + eps) / (q[i][j] + eps)) for i in range(b) for j in range(b)) / b**2


def test_pkt_loop(feats):
    s, t = feats
    assert build_loss("pkt")(s, t).item() == pytest.approx(pkt_reference(s, t), rel=1e-9)


def test_pkt_equal_is_zero(feats):
    s, _ = feats
    assert abs(build_loss("pkt")(s, s.clone()).item()) < 1e-12


# --- cc ---------------------------------------------------------------------------------------

def cc_reference(s, t, kernel):
    def corr(x):
        x = [[v / norm(r) for v in r] for r in rows(x)]
        return [[kernel(a, b) for b in x] for a in x]

    cs, ct = corr(s), corr(t)
    b = len(cs)
    return sum((ct[i][j] - cs[i][j]) ** 2 for i in range(b) for j in range(b)) / b**2


@pytest.mark.parametrize("gamma,p_order", [(0.4, 2), (1.0, 3)])
def test_cc_taylor_loop(feats, gamma, p_order):
    s, t = feats

    def taylor(a, b):
        g = dot(a, b)
        return sum(math.exp(-2 * gamma) * (2 * gamma) ** p / math.factorial(p) * g**p for p in range(p_order + 1))

    got = build_loss("cc", {"gamma": gamma, "p_order": p_order})(s, t).item()
    assert got == pytest.approx(cc_reference(s, t, taylor), rel=1e-9)


def test_cc_high_order_matches_gaussian_rbf(feats):
    s, t = feats
    gamma = 0.5

    def rbf(a, b):
        return math.exp(-gamma * sum((x - y) ** 2 for x, y in zip(a, b)))

    got = build_loss("cc", {"gamma": gamma, "p_order": 20})(s, t).item()
    assert got == pytest.approx(cc_reference(s, t, rbf), rel=1e-8)


def cckd_reference(s, t, gamma=0.4, max_p=2, kernel="gaussian"):
    """torchdistill's CCKDLoss (reduction "batchmean"), restated in plain Python: each row of the
    correlation matrix from the raw (unnormalised) features, then the Frobenius distance, not
    squared, divided by B^2."""
    def corr(x):
        x = rows(x)
        if kernel == "bilinear":
            return [[dot(a, b) for b in x] for a in x]
        out = []
        for a in x:
            row = [1.0] * len(x)
            for p in range(1, max_p + 1):
                row = [r + (2 * gamma) ** p / math.factorial(p) * dot(a, b) ** p for r, b in zip(row, x)]
            out.append([r * math.exp(-2 * gamma) for r in row])
        return out

    cs, ct = corr(s), corr(t)
    b = len(cs)
    return math.sqrt(sum((ct[i][j] - cs[i][j]) ** 2 for i in range(b) for j in range(b))) / b**2


@pytest.mark.parametrize("gamma,p_order", [(0.4, 2), (1.0, 3)])
def test_cc_torchdistill_form_matches_cckd(gamma, p_order):
    s, t = rand(6, 5, seed=3), rand(6, 7, seed=4)
    got = build_loss("cc", {"gamma": gamma, "p_order": p_order, "form": "torchdistill"})(s, t).item()
    assert got == pytest.approx(cckd_reference(s, t, gamma, p_order), rel=1e-9)


def test_cc_bilinear_kernel_in_both_forms():
    s, t = rand(5, 4, seed=5), rand(5, 6, seed=6)
    got = build_loss("cc", {"kernel": "bilinear", "form": "torchdistill"})(s, t).item()
    assert got == pytest.approx(cckd_reference(s, t, kernel="bilinear"), rel=1e-9)
    got = build_loss("cc", {"kernel": "bilinear"})(s, t).item()
    assert got == pytest.approx(cc_reference(s, t, dot), rel=1e-9)  # cosine similarities


def test_cc_forms_are_different_quantities():
    """The paper's form (unit features, squared norm) and torchdistill's differ by orders of magnitude."""
    s, t = rand(8, 16, seed=7), rand(8, 16, seed=8)
    paper = build_loss("cc")(s, t).item()
    td = build_loss("cc", {"form": "torchdistill"})(s, t).item()
    assert paper == pytest.approx(cc_reference(s, t, lambda a, b: sum(
        math.exp(-0.8) * 0.8**p / math.factorial(p) * dot(a, b) ** p for p in range(3))), rel=1e-9)
    assert td > 100 * paper


def test_cc_torchdistill_form_does_not_overflow_in_float32():
    """Correlations of order 1e20 (features of 3e4): the norm is scaled, so its squares, 1e40,
    cannot overflow (an unscaled torch.dist gives inf here)."""
    s, t = rand(4, 48, seed=9, scale=3e4), rand(4, 48, seed=10, scale=3e4)
    loss = build_loss("cc", {"form": "torchdistill"})
    s32 = s.float().requires_grad_(True)
    got = loss(s32, t.float())
    got.backward()
    assert torch.isfinite(got) and torch.isfinite(s32.grad).all()
    assert got.item() == pytest.approx(loss(s, t).item(), rel=1e-4)


def test_cc_rejects_unknown_form():
    from mmdistill.errors import ConfigError

    with pytest.raises(ConfigError, match="form"):
        build_loss("cc", {"form": "repdistiller"})
