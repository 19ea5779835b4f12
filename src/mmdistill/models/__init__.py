"""Models: per-modality encoders, fusion modules, heads, the multimodal classifier, and model kinds."""
from .encoders import ENCODERS, ConvEncoder, MLPEncoder
from .fusion import FUSIONS, AttentionFusion, ConcatFusion, GatedFusion, LateFusion
from .multimodal import HEADS, ModelConfig, MultimodalModel, count_parameters
# build_model builds any model kind (multimodal, factory, hf, timm) from its config or a raw dict
from .kinds import MODEL_KINDS, FactoryModelConfig, build as build_model
from . import hf, pretrained, timm  # noqa: F401  (register the hf, pretrained and timm model kinds)
from .points import FeaturePoint, feature_points, placements

__all__ = ["ENCODERS", "FUSIONS", "HEADS", "MODEL_KINDS", "AttentionFusion", "FactoryModelConfig", "ModelConfig",
           "ConcatFusion", "ConvEncoder", "FeaturePoint", "GatedFusion",
           "LateFusion", "MLPEncoder", "MultimodalModel", "build_model", "count_parameters", "feature_points",
           "placements"]
