"""Model registry and the CIFAR ResNets it holds."""

from compactcnn.models import resnet  # noqa: F401  (registers the ResNets)
from compactcnn.models.registry import create_model, list_models, register_model

__all__ = ["create_model", "list_models", "register_model"]
