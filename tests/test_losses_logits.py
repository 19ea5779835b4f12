"""Logit losses (mse, kd, dkd, dist) against independent references written with explicit loops."""
import math

import pytest
import torch

from mmdistill.losses import build_loss

torch.set_num_threads(1)


def softmax_list(row, t=1.0):
    m = max(row)
    e = [math.exp((v - m) / t) for v in row]
    z = sum(e)
    return [v / z for v in e]


def pearson_list(a, b):
    ma, mb = sum(a) / len(a), sum(b) / len(b)
    cov = sum((x - ma) * (y - mb) for x, y in zip(a, b))
    va = math.sqrt(sum((x - ma) ** 2 for x in a))
    vb = math.sqrt(sum((y - mb) ** 2 for y in b))
    return cov / (va * vb + 1e-8)


@pytest.fixture
def logits():
    g = torch.Generator().manual_seed(0)
    s = torch.randn(3, 5, generator=g, dtype=torch.float64)
    t = torch.randn(3, 5, generator=g, dtype=torch.float64) * 2
    y = torch.tensor([0, 3, 4])
    return s, t, y


# --- mse --------------------------------------------------------------------------------------

def test_mse_hand_value():
    assert build_loss("mse")(torch.tensor([[1.0, 2.0]]), torch.zeros(1, 2)).item() == pytest.approx(5.0)


def test_mse_loop(logits):
    s, t, _ = logits
    ref = sum(sum((s[b, k].item() - t[b, k].item()) ** 2 for k in range(5)) for b in range(3)) / 3
    assert build_loss("mse")(s, t).item() == pytest.approx(ref, rel=1e-10)


# --- kd ---------------------------------------------------------------------------------------

def test_kd_equal_logits_is_zero(logits):
    s, _, _ = logits
    assert abs(build_loss("kd")(s, s.clone()).item()) < 1e-12


@pytest.mark.parametrize("temperature", [1.0, 4.0])
def test_kd_loop(logits, temperature):
    s, t, _ = logits
    ref = 0.0
    for b in range(3):
        p = softmax_list(t[b].tolist(), temperature)
        q = softmax_list(s[b].tolist(), temperature)
        ref += sum(pk * math.log(pk / qk) for pk, qk in zip(p, q))
    ref = ref * temperature**2 / 3
    got = build_loss("kd", {"temperature": temperature})(s, t).item()
    assert got == pytest.approx(ref, rel=1e-10)


def test_kd_gradient_closed_form(logits):
    s, t, _ = logits
    temp = 4.0
    s = s.clone().requires_grad_(True)
    build_loss("kd", {"temperature": temp})(s, t).backward()
    q = torch.softmax(s.detach() / temp, dim=1)
    p = torch.softmax(t / temp, dim=1)
    torch.testing.assert_close(s.grad, (q - p) * temp / s.shape[0])


# --- dkd --------------------------------------------------------------------------------------

def dkd_reference(s, t, y, alpha, beta, temp):
    total = 0.0
    for b in range(s.shape[0]):
        p = softmax_list(t[b].tolist(), temp)
        q = softmax_list(s[b].tolist(), temp)
        g = int(y[b])
        pt, qt = p[g], q[g]
        tckd = pt * math.log(pt / qt) + (1 - pt) * math.log((1 - pt) / (1 - qt))
        nckd = 0.0
        for k in range(len(p)):
            if k != g:
                pk, qk = p[k] / (1 - pt), q[k] / (1 - qt)
                nckd += pk * math.log(pk / qk)
        total += alpha * tckd + beta * nckd
    return total * temp**2 / s.shape[0]


@pytest.mark.parametrize("alpha,beta,temp", [(1.0, 8.0, 4.0), (0.5, 2.0, 1.0)])
def test_dkd_loop(logits, alpha, beta, temp):
    s, t, y = logits
    loss = build_loss("dkd", {"alpha": alpha, "beta": beta, "temperature": temp})
    assert loss(s, t, target=y).item() == pytest.approx(dkd_reference(s, t, y, alpha, beta, temp), rel=1e-9)


def test_dkd_decomposes_kd(logits):
    # the paper's identity, per sample: KD = TCKD + (1 - p_t^T) * NCKD
    s, t, y = logits
    for b in range(3):
        pt = torch.softmax(t[b : b + 1] / 4.0, dim=1)[0, y[b]].item()
        dkd = build_loss("dkd", {"alpha": 1.0, "beta": 1 - pt, "temperature": 4.0})
        kd = build_loss("kd", {"temperature": 4.0})
        got = dkd(s[b : b + 1], t[b : b + 1], target=y[b : b + 1]).item()
        assert got == pytest.approx(kd(s[b : b + 1], t[b : b + 1]).item(), rel=1e-9)


def test_dkd_two_classes_has_no_nckd():
    s, t, y = torch.tensor([[1.0, -1.0]]), torch.tensor([[0.0, 2.0]]), torch.tensor([1])
    assert build_loss("dkd", {"alpha": 0.0, "beta": 5.0})(s, t, target=y).item() == 0.0


def test_dkd_confident_teacher_is_finite():
    s = torch.tensor([[0.0, 0.0, 0.0]], requires_grad=True)
    t = torch.tensor([[500.0, 0.0, 0.0]])  # p_y == 1 in floating point
    loss = build_loss("dkd")(s, t, target=torch.tensor([0]))
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(s.grad).all()


def test_dkd_needs_target(logits):
    s, t, _ = logits
    with pytest.raises(ValueError, match="target"):
        build_loss("dkd")(s, t)


# --- dist -------------------------------------------------------------------------------------

@pytest.mark.parametrize("beta,gamma,temp", [(1.0, 1.0, 1.0), (2.0, 0.5, 4.0)])
def test_dist_loop(logits, beta, gamma, temp):
    s, t, _ = logits
    ps = [softmax_list(r, temp) for r in s.tolist()]
    pt = [softmax_list(r, temp) for r in t.tolist()]
    inter = 1 - sum(pearson_list(a, b) for a, b in zip(ps, pt)) / len(ps)
    cols_s, cols_t = list(zip(*ps)), list(zip(*pt))
    intra = 1 - sum(pearson_list(a, b) for a, b in zip(cols_s, cols_t)) / len(cols_s)
    ref = temp**2 * (beta * inter + gamma * intra)
    loss = build_loss("dist", {"beta": beta, "gamma": gamma, "temperature": temp})
    assert loss(s, t).item() == pytest.approx(ref, rel=1e-9)


def test_dist_equal_and_shifted_logits_is_zero(logits):
    s, _, _ = logits
    # softmax is shift invariant; only the 1e-8 of the denominator keeps it off exactly 0
    assert abs(build_loss("dist")(s, s + 3.0).item()) < 1e-5
