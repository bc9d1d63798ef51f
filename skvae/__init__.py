"""Deep latent-variable models as scikit-learn estimators."""

from ._vae import VAETransformer

__version__ = "0.1.0"

__all__ = ["VAETransformer", "__version__"]
