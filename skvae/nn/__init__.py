"""Torch modules behind the skvae estimators, usable without scikit-learn."""

from .base import LatentVariableModel
from .inn import INNAutoencoderModule, InvertibleNetwork
from .isometric import IsometricGaussianVAE
from .mlp import MLP
from .vae import GaussianVAE

__all__ = [
    "MLP",
    "GaussianVAE",
    "INNAutoencoderModule",
    "InvertibleNetwork",
    "IsometricGaussianVAE",
    "LatentVariableModel",
]
