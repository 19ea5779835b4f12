"""Every registered loss on CUDA gives the CPU value and gradient (skipped without a GPU)."""
import copy

import pytest
import torch

from mmdistill.losses import LOSSES, build_loss

torch.set_num_threads(1)

pytestmark = [pytest.mark.cuda, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")]


def inputs(name):
    g = torch.Generator().manual_seed(5)
    cls = LOSSES.get(name)
    if name == "crd":  # two samples, two bank entries: the only negative is the other sample
        return torch.randn(2, 3, 2, 2, generator=g), torch.randn(2, 6, generator=g), torch.tensor([0, 1]), 2
    if cls.inputs == "logits":
        return torch.randn(4, 5, generator=g), torch.randn(4, 5, generator=g), torch.tensor([0, 1, 2, 4]), 8
    if name == "fitnet":
        return torch.randn(4, 3, 2, 2, generator=g), torch.randn(4, 3, 2, 2, generator=g), None, 8
    return torch.randn(4, 3, 4, 4, generator=g), torch.randn(4, 5, 2, 2, generator=g), None, 8


@pytest.mark.parametrize("name", sorted(LOSSES))
def test_cuda_matches_cpu(name):
    s, t, target, n = inputs(name)
    s, t = s.double(), t.double()
    index = torch.arange(s.shape[0])
    loss = build_loss(name)
    # two bank entries of two classes: each sample's only negative is the other one
    loss.bind(s.shape, t.shape, n, **({"labels": torch.arange(n) % 2} if loss.needs_labels else {}))
    loss.double()
    on_cpu, on_gpu = copy.deepcopy(loss), copy.deepcopy(loss).cuda()

    s_cpu = s.clone().requires_grad_(True)
    out_cpu = on_cpu(s_cpu, t, target=target, index=index)
    out_cpu.backward()

    s_gpu = s.cuda().requires_grad_(True)
    # target and index may stay on the CPU: the losses move them to the inputs' device
    out_gpu = on_gpu(s_gpu, t.cuda(), target=target, index=index)
    out_gpu.backward()

    assert out_gpu.device.type == "cuda" and out_gpu.dim() == 0
    torch.testing.assert_close(out_gpu.cpu(), out_cpu.detach(), rtol=1e-9, atol=1e-12)
    torch.testing.assert_close(s_gpu.grad.cpu(), s_cpu.grad, rtol=1e-7, atol=1e-10)
    for (key, a), (_, b) in zip(on_cpu.state_dict().items(), on_gpu.state_dict().items()):
        assert b.device.type == "cuda", key
        torch.testing.assert_close(b.cpu(), a, rtol=1e-9, atol=1e-12)
