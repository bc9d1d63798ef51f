"""The contract between a torch latent-variable model and the estimators."""

from torch import nn


class LatentVariableModel(nn.Module):
    """A latent-variable model as the estimators and the training engine see it.

    Subclasses implement the five methods below on float tensors of shape
    ``(n_rows, n_features)`` or ``(n_rows, n_components)``. They know nothing
    of scikit-learn: validation, chunking and seeding live in the estimator.
    Randomness always comes from an explicit ``torch.Generator``.
    """

    def initialize_from_data(self, x):
        """Adapt the initial parameters to the training rows ``x``.

        Called once before training; the default changes nothing.
        """

    def loss(self, x, generator):
        """Per-row training objective to minimise, shape ``(n_rows,)``."""
        raise NotImplementedError

    def encode(self, x):
        """Deterministic code of each row, shape ``(n_rows, n_components)``."""
        raise NotImplementedError

    def decode(self, z):
        """Reconstruction (mean) of each code, shape ``(n_rows, n_features)``."""
        raise NotImplementedError

    def log_prob(self, x, generator):
        """Log-density of each row in nats, shape ``(n_rows,)``.

        Any noise must be drawn with a shape that does not depend on
        ``n_rows`` (common random numbers), so that a row's value depends on
        that row alone and re-seeding ``generator`` per chunk of rows gives the
        same answer as one pass over all rows.
        """
        raise NotImplementedError

    def sample(self, n_samples, generator):
        """Draws from the model, shape ``(n_samples, n_features)``."""
        raise NotImplementedError
