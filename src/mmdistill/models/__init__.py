"""Models: per-modality encoders, fusion modules, heads, the multimodal classifier, and model kinds."""
from .encoders import ENCODERS, ConvEncoder, MLPEncoder
from .fusion import FUSIONS, AttentionFusion, ConcatFusion, GatedFusion, LateFusion
from .multimodal import HEADS, ModelConfig, MultimodalModel, build_model, count_parameters
from .kinds import MODEL_KINDS, FactoryModelConfig, build as build_any_model
from .points import FeaturePoint, feature_points, placements

__all__ = ["ENCODERS", "FUSIONS", "HEADS", "MODEL_KINDS", "AttentionFusion", "FactoryModelConfig", "ModelConfig",
           "build_any_model", "ConcatFusion", "ConvEncoder", "FeaturePoint", "GatedFusion",
           "LateFusion", "MLPEncoder", "MultimodalModel", "build_model", "count_parameters", "feature_points",
           "placements"]
