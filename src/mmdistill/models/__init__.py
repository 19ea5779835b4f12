"""Models: per-modality encoders, fusion modules, heads, and the multimodal classifier."""
from .encoders import ENCODERS, ConvEncoder, MLPEncoder
from .fusion import FUSIONS, AttentionFusion, ConcatFusion, GatedFusion, LateFusion
from .multimodal import MultimodalModel, build_model, count_parameters
from .points import FeaturePoint, feature_points, placements

__all__ = ["ENCODERS", "FUSIONS", "AttentionFusion", "ConcatFusion", "ConvEncoder", "FeaturePoint", "GatedFusion",
           "LateFusion", "MLPEncoder", "MultimodalModel", "build_model", "count_parameters", "feature_points",
           "placements"]
