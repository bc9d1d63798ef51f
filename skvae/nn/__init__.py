"""Torch modules behind the skvae estimators, usable without scikit-learn."""

from .base import LatentVariableModel
from .mlp import MLP
from .vae import GaussianVAE

__all__ = ["MLP", "GaussianVAE", "LatentVariableModel"]
