"""Model families behind one registry: ``create_model(name)``, ``list_models()``, ``register_model``."""
from longvos.models.registry import create_model, list_models, register_model

__all__ = ["create_model", "list_models", "register_model"]
