"""Torch modules behind the skvae estimators, usable without scikit-learn."""

from .base import LatentVariableModel
from .conv import ConvDecoder, ConvEncoder
from .inn import INNAutoencoderModule, InvertibleNetwork
from .isometric import IsometricGaussianVAE
from .mlp import MLP
from .vae import GaussianVAE

__all__ = [
    "MLP",
    "ConvDecoder",
    "ConvEncoder",
    "GaussianVAE",
    "INNAutoencoderModule",
    "InvertibleNetwork",
    "IsometricGaussianVAE",
    "LatentVariableModel",
]
