"""Several teachers: per-sample weights of each strategy, and the exact fusion of their targets."""
import math

import pytest
import torch
import torch.nn.functional as F

from mmdistill.distill.ensemble import TeacherEnsemble
from mmdistill.losses import build_loss

torch.set_num_threads(1)


def three_teachers():
    g = torch.Generator().manual_seed(0)
    logits = [torch.randn(5, 4, generator=g) * 2 for _ in range(3)]
    batch = {"label": torch.tensor([0, 1, 2, 3, 1])}
    return logits, batch


def test_average_and_fixed_weights():
    logits, batch = three_teachers()
    w = TeacherEnsemble(["a", "b", "c"], "average").weights(logits, batch)
    assert torch.allclose(w, torch.full((5, 3), 1 / 3))
    w = TeacherEnsemble(["a", "b", "c"], "fixed", weights={"a": 2, "b": 1, "c": 1}).weights(logits, batch)
    assert torch.allclose(w, torch.tensor([0.5, 0.25, 0.25]).expand(5, 3))
    with pytest.raises(ValueError, match="fixed needs a weight"):
        TeacherEnsemble(["a", "b"], "fixed", weights={"a": 1})


def test_confidence_weights_follow_ca_mkd():
    """w_bk = (1 - exp(l_bk) / sum_j exp(l_bj)) / (K - 1), l_bk the teacher's CE on sample b."""
    logits, batch = three_teachers()
    w = TeacherEnsemble(["a", "b", "c"], "confidence").weights(logits, batch)
    for b in range(5):
        ce = []
        for z in logits:
            p = [math.exp(v) for v in z[b].tolist()]
            ce.append(-math.log(p[int(batch["label"][b])] / sum(p)))
        total = sum(math.exp(c) for c in ce)
        for k in range(3):
            assert w[b, k].item() == pytest.approx((1 - math.exp(ce[k]) / total) / 2, rel=1e-5)
    # the teacher that is right and sure on a sample gets the largest weight there
    sure = [torch.tensor([[9.0, 0, 0, 0]]), torch.tensor([[0.0, 9, 0, 0]])]
    w = TeacherEnsemble(["right", "wrong"], "confidence").weights(sure, {"label": torch.tensor([0])})
    assert w[0, 0] > 0.99 and torch.allclose(w.sum(1), torch.ones(1))


def test_entropy_weights_trust_the_less_uncertain_teacher():
    logits, batch = three_teachers()
    w = TeacherEnsemble(["a", "b", "c"], "entropy", temperature=0.5).weights(logits, batch)
    for b in range(5):
        h = []
        for z in logits:
            p = torch.softmax(z[b], 0).tolist()
            h.append(-sum(q * math.log(q) for q in p))
        e = [math.exp(-v / 0.5) for v in h]
        for k in range(3):
            assert w[b, k].item() == pytest.approx(e[k] / sum(e), rel=1e-5)


@pytest.mark.parametrize("name, options", [("kd", {"temperature": 4.0}), ("kd", {"temperature": 1.0}), ("mse", {})])
def test_mixed_target_equals_per_sample_weighted_teacher_losses(name, options):
    """The student's gradient towards the mixed target equals that of sum_b sum_k w_bk loss_b(s, t_k):
    the teachers' losses weighted per sample, computed one sample and one teacher at a time."""
    logits, batch = three_teachers()
    weights = TeacherEnsemble(["a", "b", "c"], "confidence").weights(logits, batch)
    loss = build_loss(name, options)
    student = torch.randn(5, 4, requires_grad=True)
    mixed = loss.mix_teachers(torch.stack(logits), weights)
    (grad_mixed,) = torch.autograd.grad(loss(student, mixed), student)
    reference = 0
    for b in range(5):
        for k in range(3):
            reference = reference + weights[b, k] * loss(student[b:b + 1], logits[k][b:b + 1]) / 5
    (grad_ref,) = torch.autograd.grad(reference, student)
    assert torch.allclose(grad_mixed, grad_ref, atol=1e-6)


def test_kd_mixture_is_the_weighted_mixture_of_softened_distributions():
    logits, batch = three_teachers()
    weights = torch.softmax(torch.randn(5, 3), 1)
    mixed = build_loss("kd", {"temperature": 3.0}).mix_teachers(torch.stack(logits), weights)
    expected = sum(weights[:, k:k + 1] * F.softmax(logits[k] / 3.0, 1) for k in range(3))
    assert torch.allclose(F.softmax(mixed / 3.0, 1), expected, atol=1e-6)
