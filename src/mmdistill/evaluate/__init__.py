"""Evaluation: metrics, predictions with absent modalities, latency."""
from .metrics import (accuracy, agreement, classification_report, evaluate_model, expected_calibration_error,
                      latency_ms, macro_f1, predict)

__all__ = ["accuracy", "agreement", "classification_report", "evaluate_model", "expected_calibration_error",
           "latency_ms", "macro_f1", "predict"]
