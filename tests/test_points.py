"""Feature points: models declare where methods read; placements resolve a loss's layer kind."""
import pytest
from torch import nn

from mmdistill.errors import ConfigError
from mmdistill.models import feature_points, placements
from mmdistill.models.multimodal import MultimodalModel
from mmdistill.models.encoders import ConvEncoder, MLPEncoder
from mmdistill.models.fusion import ConcatFusion


def _model(conv_modalities=("image",), mlp_modalities=("audio",)):
    encoders = {m: ConvEncoder((1, 8, 8), channels=(4,)) for m in conv_modalities}
    encoders |= {m: MLPEncoder((6,), hidden=(5,)) for m in mlp_modalities}
    shapes = {m: (1, 8, 8) for m in conv_modalities} | {m: (6,) for m in mlp_modalities}
    dim = sum(e.out_dim for e in encoders.values())
    fusion = ConcatFusion({m: e.out_dim for m, e in encoders.items()}, 3)
    return MultimodalModel(encoders, fusion, nn.Linear(dim, 3), shapes)


def test_multimodal_model_declares_maps_embeddings_and_fusion():
    points = {(p.kind, p.modality): p.path for p in feature_points(_model())}
    assert points == {("embedding", "image"): "encoders.image", ("map", "image"): "encoders.image.features",
                      ("embedding", "audio"): "encoders.audio", ("fused", None): "fusion"}
    model = _model()
    for path in points.values():  # every declared path is a real submodule
        model.get_submodule(path)


def test_placements_per_modality_with_fallback_to_embeddings():
    teacher, student = _model(), _model()
    assert placements("maps", student, teacher) == [("encoders.image.features", "encoders.image.features"),
                                                   ("encoders.audio", "encoders.audio")]
    assert placements("encoders", student, teacher) == [("encoders.image", "encoders.image"),
                                                       ("encoders.audio", "encoders.audio")]
    assert placements("fusion", student, teacher) == [("fusion", "fusion")]


def test_placements_only_on_modalities_the_student_sees():
    teacher, student = _model(), _model(mlp_modalities=())
    assert placements("maps", student, teacher) == [("encoders.image.features", "encoders.image.features")]


def test_model_without_points_asks_for_explicit_paths():
    plain = nn.Sequential(nn.Linear(3, 3))
    with pytest.raises(ConfigError, match="declares no feature points.*student: and teacher:"):
        placements("fusion", plain, _model(), loss="at")
    with pytest.raises(ConfigError, match="unknown feature layer"):
        placements("heads", _model(), _model())
