"""The UTNet model: timm ViT on RGB-D (backbone), MANO transformer head, GCN mesh refiner."""
from utnet.model.utnet import UTNet, build_model, initial_model

__all__ = ["UTNet", "build_model", "initial_model"]
