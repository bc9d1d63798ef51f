"""Warnings specific to skvae."""

__all__ = ["PosteriorCollapseWarning"]


class PosteriorCollapseWarning(UserWarning):
    """At least half the latents of a fitted VAE carry no information.

    A collapsed latent's posterior equals the prior for every row, so its
    code is constant: the model uses fewer dimensions than
    ``n_components``. Some collapse is the ELBO's answer when the data need
    fewer latents; when half the latents or more collapse (a 2-D code that
    is a 1-D curve, say), the embedding and the features built on it lose
    the structure a user asked for.

    Examples
    --------
    >>> import warnings
    >>> from skvae.exceptions import PosteriorCollapseWarning
    >>> issubclass(PosteriorCollapseWarning, UserWarning)
    True
    """
