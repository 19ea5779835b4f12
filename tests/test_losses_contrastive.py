"""CRD: NCE value against a loop reference, the memory bank update, Z, and that agreement lowers the loss."""
import copy
import math

import pytest
import torch
import torch.nn.functional as F

from mmdistill.losses import build_loss

torch.set_num_threads(1)


def bound_crd(student_shape, teacher_shape, num_samples, seed=0, labels=None, **options):
    """CRD bound to a bank of ``num_samples``; by default every sample is its own class."""
    torch.manual_seed(seed)
    loss = build_loss("crd", options)
    labels = torch.arange(num_samples) if labels is None else labels
    loss.bind(torch.Size(student_shape), torch.Size(teacher_shape), num_samples, labels=labels)
    return loss


def unit(v):
    n = math.sqrt(sum(x * x for x in v))
    return [x / n for x in v]


def embed(linear, x):
    w, b = linear.weight.tolist(), linear.bias.tolist()
    return unit([sum(wi * xi for wi, xi in zip(row, x)) + bi for row, bi in zip(w, b)])


def test_crd_clamps_negatives_and_creates_heads():
    loss = bound_crd((2, 3, 2, 2), (2, 5), 10, feat_dim=4)
    assert loss.k == 9  # 4096 clamped to num_samples - 1
    assert loss.memory_s.shape == loss.memory_t.shape == (10, 4)
    assert loss.embed_s.in_features == 12 and loss.embed_t.in_features == 5
    names = {n for n, _ in loss.named_parameters()}
    assert names == {"embed_s.weight", "embed_s.bias", "embed_t.weight", "embed_t.bias"}
    assert set(loss.state_dict()) >= {"memory_s", "memory_t", "z_s", "z_t"}


def test_crd_loop_reference_two_samples():
    # with N = 2 the only possible negative of each sample is the other one: the loss is deterministic
    n, temp, m = 2, 0.5, 0.5
    loss = bound_crd((2, 3), (2, 4), n, feat_dim=3, temperature=temp, momentum=m)
    s = torch.randn(2, 3)
    t = torch.randn(2, 4)
    idx = [1, 0]
    mem_s, mem_t = loss.memory_s.tolist(), loss.memory_t.tolist()

    vs = [embed(loss.embed_s, x) for x in s.tolist()]
    vt = [embed(loss.embed_t, x) for x in t.tolist()]

    def scores(anchors, memory):
        out = []
        for b, i in enumerate(idx):
            pos = math.exp(sum(a * w for a, w in zip(anchors[b], memory[i])) / temp)
            neg = math.exp(sum(a * w for a, w in zip(anchors[b], memory[1 - i])) / temp)
            out.append((pos, neg))
        return out

    def nce(pairs):
        z = sum(p + q for p, q in pairs) / (2 * len(pairs)) * n  # Z = N * mean of the first batch
        noise = 1 / n  # K / N with K = 1
        total = 0.0
        for pos, neg in pairs:
            pos, neg = pos / z, neg / z
            total += math.log(pos / (pos + noise + 1e-7)) + math.log(noise / (neg + noise + 1e-7))
        return -total / len(pairs)

    ref = nce(scores(vs, mem_t)) + nce(scores(vt, mem_s))
    assert loss(s, t, index=torch.tensor(idx)).item() == pytest.approx(ref, rel=1e-5)


def test_crd_bank_updated_at_index_only():
    loss = bound_crd((4, 3), (4, 5), 10, feat_dim=4, momentum=0.3)
    s, t = torch.randn(3, 3), torch.randn(3, 5)
    idx = torch.tensor([2, 5, 7])
    before_s, before_t = loss.memory_s.clone(), loss.memory_t.clone()
    loss(s, t, index=idx)
    vs = F.normalize(loss.embed_s(s), dim=1).detach()
    vt = F.normalize(loss.embed_t(t), dim=1).detach()
    want_s = F.normalize(0.3 * before_s[idx] + 0.7 * vs, dim=1)
    want_t = F.normalize(0.3 * before_t[idx] + 0.7 * vt, dim=1)
    torch.testing.assert_close(loss.memory_s[idx], want_s)
    torch.testing.assert_close(loss.memory_t[idx], want_t)
    others = torch.tensor([i for i in range(10) if i not in (2, 5, 7)])
    assert torch.equal(loss.memory_s[others], before_s[others])
    assert torch.equal(loss.memory_t[others], before_t[others])


def test_crd_eval_mode_leaves_bank_and_z_fixed_after_first_batch():
    loss = bound_crd((4, 3), (4, 5), 10, feat_dim=4)
    s, t, idx = torch.randn(4, 3), torch.randn(4, 5), torch.tensor([0, 1, 2, 3])
    loss(s, t, index=idx)
    z = (loss.z_s.item(), loss.z_t.item())
    assert z[0] > 0 and z[1] > 0
    loss.eval()
    bank = loss.memory_s.clone()
    loss(torch.randn(4, 3), torch.randn(4, 5), index=idx)
    assert torch.equal(loss.memory_s, bank)
    assert (loss.z_s.item(), loss.z_t.item()) == z


def test_crd_lower_when_student_agrees_with_teacher():
    n = 32
    loss = bound_crd((8, 6), (8, 6), n, feat_dim=8, momentum=0.0, num_negatives=16)
    loss.embed_s.load_state_dict(loss.embed_t.state_dict())  # same head: same embedding for s == t
    t = torch.randn(n, 6)
    idx = torch.arange(n)
    loss(t, t, index=idx)  # fill both banks with this epoch's embeddings (momentum 0)
    agree, disagree = copy.deepcopy(loss), copy.deepcopy(loss)
    batch = idx[:8]
    torch.manual_seed(1)
    l_agree = agree(t[batch], t[batch], index=batch).item()
    torch.manual_seed(1)
    l_random = disagree(torch.randn(8, 6), t[batch], index=batch).item()
    assert l_agree < l_random


def test_crd_needs_index_and_bind():
    with pytest.raises(RuntimeError, match="bind"):
        build_loss("crd")(torch.zeros(2, 3), torch.zeros(2, 3), index=torch.tensor([0, 1]))
    loss = bound_crd((2, 3), (2, 3), 4)
    with pytest.raises(ValueError, match="index"):
        loss(torch.zeros(2, 3), torch.zeros(2, 3))
    with pytest.raises(ValueError, match="out of range"):
        loss(torch.zeros(2, 3), torch.zeros(2, 3), index=torch.tensor([0, 4]))


def test_crd_bank_scoring_paths_agree():
    """Scoring the whole bank then picking rows equals gathering the rows first."""
    from mmdistill.losses.contrastive import CRD

    torch.manual_seed(0)
    memory, v = torch.randn(50, 8), torch.randn(4, 8)
    few = torch.randint(0, 50, (4, 3))      # 50 > 8 * 3: gathers rows
    many = torch.randint(0, 50, (4, 30))    # 50 <= 8 * 30: one matrix product
    for rows in (few, many):
        expected = torch.stack([torch.stack([memory[r] @ v[b] for r in rows[b]]) for b in range(4)])
        assert torch.allclose(CRD._scores(memory, v, rows), expected, atol=1e-6)


# --- negatives: other classes by default (RepDistiller's rule), uniform as an option -----------

def test_crd_negatives_come_from_other_classes_without_replacement():
    labels = torch.arange(40) % 4  # 30 samples of other classes per sample
    loss = bound_crd((8, 3), (8, 3), 40, labels=labels, num_negatives=12)
    idx = torch.arange(0, 40, 5)
    torch.manual_seed(0)
    for _ in range(20):
        neg = loss.sample_negatives(idx)
        assert neg.shape == (8, 12)
        assert (labels[neg] != labels[idx].unsqueeze(1)).all()
        assert all(len(set(row)) == 12 for row in neg.tolist())  # K <= 30: without replacement


def test_crd_few_other_class_samples_are_drawn_with_replacement():
    labels = torch.tensor([1, 1] + [0] * 18)  # a class-0 sample has only 2 other-class samples
    loss = bound_crd((2, 3), (2, 3), 20, labels=labels, num_negatives=16)
    torch.manual_seed(0)
    neg = loss.sample_negatives(torch.tensor([5, 0]))
    assert set(neg[0].tolist()) == {0, 1}  # 16 draws from 2 candidates: with replacement
    assert set(neg[1].tolist()) <= set(range(2, 20)) and len(set(neg[1].tolist())) == 16


@pytest.mark.parametrize("num_negatives", [3, 9])  # 3: without replacement; 9 > 6 others: with
def test_crd_other_class_negatives_are_uniform_over_those_samples(num_negatives):
    labels = torch.tensor([2, 0, 1, 2, 0, 2, 1, 2, 0, 2])  # sizes 3, 2, 5
    loss = bound_crd((1, 3), (1, 3), 10, labels=labels, num_negatives=num_negatives)
    torch.manual_seed(0)
    idx = torch.tensor([1] * 2000)  # class 0: the 7 samples of classes 1 and 2 are candidates
    counts = torch.bincount(loss.sample_negatives(idx).flatten(), minlength=10).double()
    allowed = labels != 0
    assert counts[~allowed].sum() == 0
    share = counts[allowed] / counts[allowed].sum()
    assert (share - 1 / 7).abs().max() < 0.01


def test_crd_uniform_negatives_include_the_own_class_but_not_the_positive():
    loss = bound_crd((4, 3), (4, 3), 6, negatives="uniform", num_negatives=5)
    torch.manual_seed(0)
    idx = torch.tensor([0, 1, 2, 3])
    neg = loss.sample_negatives(idx.repeat(50))
    assert (neg != idx.repeat(50).unsqueeze(1)).all()
    assert loss.labels is None and not loss.needs_labels


def test_crd_other_class_needs_labels_of_two_classes():
    loss = build_loss("crd")
    assert loss.needs_labels
    with pytest.raises(ValueError, match="labels"):
        loss.bind(torch.Size((2, 3)), torch.Size((2, 3)), 4)
    with pytest.raises(ValueError, match="3 labels for a dataset of 4"):
        loss.bind(torch.Size((2, 3)), torch.Size((2, 3)), 4, labels=torch.tensor([0, 1, 1]))
    with pytest.raises(ValueError, match="negatives: uniform"):
        loss.bind(torch.Size((2, 3)), torch.Size((2, 3)), 4, labels=torch.zeros(4, dtype=torch.long))


def test_crd_labels_are_not_saved_with_the_bank():
    loss = bound_crd((2, 3), (2, 3), 4)
    assert {"memory_s", "memory_t", "z_s", "z_t"} <= set(loss.state_dict())
    assert not {"labels", "order", "class_start", "class_count"} & set(loss.state_dict())


def test_crd_two_forwards_then_one_backward():
    """Z is set once, by replacing the buffer: a graph of the first forward stays valid."""
    loss = bound_crd((4, 3), (4, 5), 10, feat_dim=4)
    s1, s2 = torch.randn(4, 3, requires_grad=True), torch.randn(4, 3, requires_grad=True)
    first = loss(s1, torch.randn(4, 5), index=torch.tensor([0, 1, 2, 3]))
    z = (loss.z_s.item(), loss.z_t.item())
    second = loss(s2, torch.randn(4, 5), index=torch.tensor([4, 5, 6, 7]))
    (first + second).backward()
    assert torch.isfinite(s1.grad).all() and s1.grad.abs().sum() > 0
    assert torch.isfinite(s2.grad).all() and s2.grad.abs().sum() > 0
    assert (loss.z_s.item(), loss.z_t.item()) == z

