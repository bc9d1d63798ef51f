"""Deep latent-variable models as scikit-learn estimators."""

from ._inn import INNAutoencoder
from ._isometric import IsometricVAE
from ._persistence import load, save
from ._vae import VAETransformer

__version__ = "0.1.0"

__all__ = [
    "INNAutoencoder",
    "IsometricVAE",
    "VAETransformer",
    "__version__",
    "load",
    "save",
]
