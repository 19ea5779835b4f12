"""mmdistill: multimodal knowledge distillation.

The Python API in one import::

    from mmdistill import DataConfig, TrainConfig, build_data, build_model, distill, evaluate_model, train
"""
from .api import build_model, distill, make_terms, train
from .checkpoint import load_checkpoint, save_checkpoint
from .config import DataConfig, ModelConfig, RunConfig, TrainConfig, load_config
from .data import MultimodalDataset, build_data
from .distill.tasks import DistillationTask, SupervisedTask, Term
from .errors import CheckpointError, ConfigError, DataError, MMDistillError
from .evaluate import evaluate_model
from .losses import DistillationLoss, build_loss, register_loss
from .models import count_parameters

__version__ = "0.1.0"

__all__ = ["CheckpointError", "ConfigError", "DataConfig", "DataError", "DistillationLoss", "DistillationTask",
           "MMDistillError", "ModelConfig", "MultimodalDataset", "RunConfig", "SupervisedTask", "Term",
           "TrainConfig", "build_data", "build_loss", "build_model", "count_parameters", "distill",
           "evaluate_model", "load_checkpoint", "load_config", "make_terms", "register_loss", "save_checkpoint",
           "train"]
