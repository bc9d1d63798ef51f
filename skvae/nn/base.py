"""The contract between a torch latent-variable model and the estimators."""

from torch import nn
from torch.func import jacrev, vmap

from .mlp import MLP


class LatentVariableModel(nn.Module):
    """A latent-variable model as the estimators and the training engine see it.

    Subclasses implement ``loss``, ``encode``, ``decode``, ``log_prob`` and
    ``sample`` on float tensors of shape ``(n_rows, n_features)`` or
    ``(n_rows, n_components)``, and may override ``initialize_from_data``,
    which does nothing by default. They know nothing of scikit-learn:
    validation, chunking and seeding live in the estimator. Randomness always
    comes from an explicit ``torch.Generator``.

    Parameters
    ----------
    *args, **kwargs
        Passed on to :class:`torch.nn.Module`; a subclass declares its own
        parameters (the sizes of its networks, a generator for their initial
        weights).

    See Also
    --------
    skvae.nn.GaussianVAE : The VAE behind ``VAETransformer`` and ``IsometricVAE``.
    skvae.nn.INNAutoencoderModule : The invertible network behind ``INNAutoencoder``.

    Examples
    --------
    Every model of :mod:`skvae.nn` implements the contract, so it can be
    driven without an estimator:

    >>> import torch
    >>> from skvae.nn import GaussianVAE, LatentVariableModel
    >>> g = torch.Generator().manual_seed(0)
    >>> model = GaussianVAE(5, 2, encoder_layers=(16,), generator=g)
    >>> isinstance(model, LatentVariableModel)
    True
    >>> x = torch.randn(8, 5, generator=g)
    >>> model.initialize_from_data(x)
    >>> model.loss(x, g).shape
    torch.Size([8])
    >>> z = model.encode(x)
    >>> z.shape, model.decode(z).shape
    (torch.Size([8, 2]), torch.Size([8, 5]))
    >>> model.log_prob(x, g).shape, model.sample(3, g).shape
    (torch.Size([8]), torch.Size([3, 5]))

    A row's log-density does not depend on the other rows when the
    generator is re-seeded, the property that lets an estimator score rows
    in chunks:

    >>> one = model.log_prob(x[:2], torch.Generator().manual_seed(1))
    >>> every = model.log_prob(x, torch.Generator().manual_seed(1))
    >>> torch.allclose(one, every[:2])
    True
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

    def decoder_jacobian(self, z):
        """Jacobian of :meth:`decode` at each code, ``(n_rows, n_features, n)``.

        Reverse mode, one backward pass per output feature (vectorised with
        ``torch.func.vmap``), for any model whose ``decode`` treats rows
        independently. Forward mode would take fewer passes when
        ``n < n_features``, but its first use in a process scripts
        decompositions with the deprecated ``torch.jit.script``, which costs
        seconds and raises warnings. Memory: about ``n_features + 1`` times
        what :meth:`decode` makes for the same rows.
        """

        def decode_one(code):
            return self.decode(code.unsqueeze(0)).squeeze(0)

        return vmap(jacrev(decode_one))(z)


def build_network(
    constructor, n_inputs, n_outputs, hidden_layers, activation, generator=None
):
    """The network a model wraps: the user's, or an :class:`~skvae.nn.MLP`.

    Parameters
    ----------
    constructor : type or callable or None
        An :class:`torch.nn.Module` class or any callable
        ``(n_inputs, n_outputs) -> nn.Module``; None builds an MLP with
        ``hidden_layers``.
    n_inputs, n_outputs : int
        Widths of the rows the network receives and returns.
    hidden_layers : sequence of int
        Hidden widths of the MLP built when ``constructor`` is None.
    activation : str
        Non-linearity of that MLP.
    generator : torch.Generator, default=None
        Source of the MLP's initial weights. A user's network draws its own
        from the global generator, which the estimators seed.

    Returns
    -------
    network : torch.nn.Module
        Maps ``(n_rows, n_inputs)`` to ``(n_rows, n_outputs)``.
    """
    if constructor is None:
        return MLP(n_inputs, hidden_layers, n_outputs, activation, generator=generator)
    network = constructor(n_inputs, n_outputs)
    if not isinstance(network, nn.Module):
        raise TypeError(
            f"{constructor!r} returned a {type(network).__name__}, not a "
            "torch.nn.Module: a network constructor takes (n_inputs, n_outputs) "
            "and returns an nn.Module."
        )
    return network
