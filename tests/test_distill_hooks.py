"""Forward hooks live for one fit: registered while it trains, removed when it ends or fails.

Also: the fit hands the training labels to losses that need them (CRD's other-class negatives).
"""
import pytest
import torch

torch.set_num_threads(1)

from mmdistill.api import distill  # noqa: E402
from mmdistill.config import TrainConfig  # noqa: E402
from mmdistill.data import DATASETS, DataSplits, parse_options  # noqa: E402
from mmdistill.distill.hooks import FeatureCapture  # noqa: E402
from mmdistill.distill.tasks import Term  # noqa: E402
from mmdistill.losses import DistillationLoss, build_loss  # noqa: E402
from mmdistill.models import build_model  # noqa: E402

MODEL = {"encoders": {"image": {"type": "conv", "channels": [4]}, "audio": {"type": "mlp", "hidden": [8]}},
         "fusion": {"type": "concat"}}
CFG = TrainConfig(epochs=1, batch_size=16, eval_batch_size=64, progress=False)


@pytest.fixture(scope="module")
def data() -> DataSplits:
    builder = DATASETS.get("synthetic")
    train_set, test_set, info = builder(None, parse_options("synthetic", {"train_size": 32, "test_size": 8}), 0)
    return DataSplits(train=train_set, val=None, test=test_set, info=info)


def model(data, seed):
    torch.manual_seed(seed)
    return build_model(MODEL, data.specs, data.num_classes)


def forward_hooks(net: torch.nn.Module) -> int:
    """Forward hooks registered on ``net`` or any of its submodules."""
    return sum(len(m._forward_hooks) for m in net.modules())


class Recorder(DistillationLoss):
    """MSE that records how many forward hooks the models carry while it runs."""

    inputs = "features"

    def __init__(self, teacher, student, fail_in=None):
        super().__init__()
        self.nets, self.fail_in, self.seen = (teacher, student), fail_in, []

    def bind(self, student_shape, teacher_shape, num_samples, *, labels=None):
        if self.fail_in == "bind":
            raise RuntimeError("bind failed on purpose")

    def forward(self, student, teacher, *, target=None, index=None):
        self.seen.append(tuple(forward_hooks(n) for n in self.nets))
        if self.fail_in == "forward":
            raise RuntimeError("forward failed on purpose")
        return (student - teacher).pow(2).mean()


def feature_terms(teacher, student, fail_in=None):
    return [Term("rec", Recorder(teacher, student, fail_in), student_path="fusion", teacher_path="fusion"),
            Term("at", build_loss("at"), student_path="encoders.image.features",
                 teacher_path="encoders.image.features")]


@pytest.mark.parametrize("cache_teacher", [False, True])
def test_three_distills_on_one_teacher_leave_no_hooks(data, cache_teacher):
    teacher = model(data, 0)
    cfg = CFG.model_copy(update={"cache_teacher": cache_teacher})
    for seed in range(3):
        student = model(data, seed + 1)
        terms = feature_terms(teacher, student)
        distill(student, teacher, data, terms=terms, cfg=cfg, device="cpu", seed=seed)
        seen = terms[0].loss.seen
        assert seen and all(s > 0 for _, s in seen)  # the student's hooks were there while it trained
        if not cache_teacher:
            assert all(t > 0 for t, _ in seen)
        assert forward_hooks(teacher) == 0 and forward_hooks(student) == 0


@pytest.mark.parametrize("fail_in", ["forward", "bind"])
def test_a_failing_fit_leaves_no_hooks(data, fail_in):
    teacher, student = model(data, 0), model(data, 1)
    with pytest.raises(RuntimeError, match="failed on purpose"):
        distill(student, teacher, data, terms=feature_terms(teacher, student, fail_in), cfg=CFG, device="cpu")
    assert forward_hooks(teacher) == 0 and forward_hooks(student) == 0


def test_capture_outside_a_fit_registers_for_one_forward_only(data):
    net = model(data, 0)
    capture = FeatureCapture(net, ["fusion", "encoders.audio"])
    batch = next(iter(data.train.loader(4)))
    out = capture.run(net, batch)
    assert set(out) == {"fusion", "encoders.audio", "logits"} and forward_hooks(net) == 0
    capture.attach()
    capture.attach()  # idempotent
    assert forward_hooks(net) == 2
    capture.remove()
    assert forward_hooks(net) == 0


def test_distill_binds_crd_with_the_training_labels(data):
    teacher, student = model(data, 0), model(data, 1)
    result = distill(student, teacher, data, cfg=CFG, device="cpu",
                     terms=[{"name": "crd", "student": "fusion", "teacher": "fusion", "feat_dim": 8,
                             "num_negatives": 8}])
    loss = result.task.terms[0].loss
    assert torch.equal(loss.labels, data.train.labels)
    idx = torch.arange(len(data.train))
    assert (data.train.labels[loss.sample_negatives(idx)] != data.train.labels.unsqueeze(1)).all()
    assert forward_hooks(teacher) == 0 and forward_hooks(student) == 0
