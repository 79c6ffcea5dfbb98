"""Model registry, the built-in models, and models the user brings (`model.name`)."""

from compactcnn.models import mobilenet, resnet, resnet_tiny  # noqa: F401  (register the models)
from compactcnn.models.registry import create_model, list_models, register_model
from compactcnn.models.source import ModelPlan, resolve

__all__ = ["ModelPlan", "create_model", "list_models", "register_model", "resolve"]
