"""The in-run teacher-output cache gives exactly the results of running the teacher every step."""
import pytest
import torch

from mmdistill.api import distill, train
from mmdistill.config import TrainConfig
from mmdistill.data import DataSplits
from mmdistill.data.registry import DATASETS, parse_options
from mmdistill.models import build_model

torch.set_num_threads(1)


def tiny_data():
    train_set, test_set, _ = DATASETS.get("synthetic")(None, parse_options("synthetic", {"train_size": 200, "test_size": 50}), 0)
    return DataSplits(train=train_set, test=test_set)


def model(data, channels):
    return build_model({"encoders": {m: {"type": "conv", "channels": channels} for m in ("image", "audio")}},
                       data.specs, data.num_classes)


def distill_with_and_without_cache(terms, epochs: int = 2, **train_options):
    """[(per-epoch losses, student state)] for the same distillation with the cache on, then off."""
    data = tiny_data()
    torch.manual_seed(0)
    teacher = model(data, [8])
    train(teacher, data, TrainConfig(epochs=1, batch_size=50, progress=False), device="cpu")
    runs = []
    for cache in (True, False):
        torch.manual_seed(1)
        student = model(data, [4])
        cfg = TrainConfig(epochs=epochs, batch_size=50, progress=False, cache_teacher=cache, **train_options)
        result = distill(student, teacher, data, terms=terms, cfg=cfg, device="cpu", seed=3)
        runs.append(([h["train_loss"] for h in result.history], student.state_dict()))
    return runs


def test_cached_teacher_outputs_match_uncached_distillation():
    (loss_a, state_a), (loss_b, state_b) = distill_with_and_without_cache(
        [{"name": "kd", "temperature": 2.0}, {"name": "sp", "student": "encoders.image", "teacher": "encoders.image"}])
    assert loss_a == loss_b
    assert all(torch.equal(state_a[k], state_b[k]) for k in state_a)


def distill_once(data, teacher, terms, run_dir=None, **train_options):
    torch.manual_seed(1)
    student = model(data, [4])
    cfg = TrainConfig(epochs=2, batch_size=50, progress=False, **train_options)
    result = distill(student, teacher, data, terms=terms, cfg=cfg, device="cpu", seed=3, run_dir=run_dir)
    return [h["train_loss"] for h in result.history], student.state_dict()


def test_memory_mapped_cache_of_logits_and_features_matches_uncached_distillation(tmp_path, monkeypatch):
    """fp32 in np.memmap files: bit-identical students; fp16 storage: close. The files live in the
    run directory during the fit and are gone after it."""
    from mmdistill.distill import cache as cache_module

    data = tiny_data()
    torch.manual_seed(0)
    teacher = model(data, [8])
    train(teacher, data, TrainConfig(epochs=1, batch_size=50, progress=False), device="cpu")
    terms = [{"name": "kd", "temperature": 2.0}, {"name": "fitnet", "student": "encoders.image", "teacher": "encoders.image"}]
    seen = []
    original = cache_module.TeacherCache.write

    def spy(self, index, outputs):
        original(self, index, outputs)
        seen.append((self.storage, self.folder, {p: type(a).__name__ for p, a in self.arrays[0].items()}))

    monkeypatch.setattr(cache_module.TeacherCache, "write", spy)
    loss_ref, ref = distill_once(data, teacher, terms, cache_teacher=False)
    assert not seen
    loss_mm, mm = distill_once(data, teacher, terms, run_dir=tmp_path, cache_storage="mmap")
    assert loss_mm == loss_ref
    assert all(torch.equal(mm[k], ref[k]) for k in ref)
    storage, folder, arrays = seen[-1]
    assert storage == "mmap" and folder.parent == tmp_path
    assert arrays == {"encoders.image": "memmap", "logits": "memmap"}  # the hooked feature is cached too
    assert not folder.exists()  # deleted at the end of the fit
    for storage in ("mmap", "memory"):
        loss_16, half = distill_once(data, teacher, terms, cache_storage=storage, cache_dtype="float16")
        assert loss_16 != loss_ref  # float16 storage does round the teacher's outputs
        assert all(torch.allclose(half[k], ref[k], rtol=1e-2, atol=1e-3) for k in ref)
        assert max(abs(a - b) for a, b in zip(loss_16, loss_ref)) < 1e-2


def test_float16_cache_refuses_outputs_it_cannot_hold():
    from mmdistill.distill.cache import TeacherCache
    from mmdistill.errors import ConfigError

    cache = TeacherCache(4, storage="mmap", dtype="float16")
    try:
        with pytest.raises(ConfigError, match="train.cache_dtype: float16 overflows teacher 0's 'logits'"):
            cache.write(torch.arange(2), [{"logits": torch.tensor([[1.0, 1e6], [0.0, 1.0]])}])
    finally:
        folder = cache.folder
        cache.close()
    assert not folder.exists()


def test_cache_storage_round_trips_rows_in_any_order_and_dtype():
    """Rows written in any order read back by index, float32 exactly, float16 and bfloat16 outputs
    converted (the mmap files cannot hold bfloat16); files deleted on close."""
    from mmdistill.distill.cache import TeacherCache

    gen = torch.Generator().manual_seed(0)
    logits, maps = torch.randn(10, 3, generator=gen), torch.randn(10, 2, 4, 4, generator=gen)
    for storage in ("memory", "mmap"):
        for dtype in ("float32", "float16"):
            cache = TeacherCache(10, storage=storage, dtype=dtype)
            for rows in (torch.tensor([7, 2, 9, 0, 5]), torch.tensor([1, 8, 3, 6, 4])):
                cache.write(rows, [{"logits": logits[rows].bfloat16() if dtype == "float16" else logits[rows],
                                    "encoders.image": maps[rows]}])
            got = cache.read(torch.tensor([4, 0, 9]), "cpu")[0]
            if dtype == "float32":
                assert torch.equal(got["logits"], logits[[4, 0, 9]]) and torch.equal(got["encoders.image"], maps[[4, 0, 9]])
            else:
                assert got["logits"].dtype == torch.float32
                assert torch.allclose(got["logits"], logits[[4, 0, 9]], atol=2e-2)
                assert torch.allclose(got["encoders.image"], maps[[4, 0, 9]], atol=3e-3)
            assert cache.nbytes() == (10 * 3 + 10 * 32) * (4 if dtype == "float32" else 2)
            folder = cache.folder
            cache.close()
            assert folder is None or not folder.exists()
