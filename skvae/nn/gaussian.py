"""Log-densities of the distributions the models are built from."""

import math

import numpy as np
import torch
from scipy.special import gammaincinv
from torch.nn import functional as F

LOG_2PI = math.log(2.0 * math.pi)


def standard_normal(shape, generator, like):
    """Draws of N(0, I) from ``generator``, in the dtype and on the device of ``like``.

    Generators live on the CPU and draws are moved to the model's device: the
    same seed then gives the same numbers on every device, and a model
    holding its generators unpickles on a machine without the device.
    """
    return torch.randn(shape, generator=generator, dtype=like.dtype).to(like.device)


def standard_normal_log_prob(z):
    """Log-density of N(0, I), summed over the last dimension."""
    return -0.5 * (z.square() + LOG_2PI).sum(-1)


def diagonal_normal_log_prob(x, mean, log_var):
    """Log-density of N(mean, diag(exp(log_var))), summed over the last dim."""
    return -0.5 * ((x - mean).square() * torch.exp(-log_var) + log_var + LOG_2PI).sum(
        -1
    )


def bernoulli_log_prob(x, logits):
    """Log-probability of x in [0, 1] under Bernoulli(sigmoid(logits)), summed."""
    return -F.binary_cross_entropy_with_logits(
        logits, x.expand_as(logits), reduction="none"
    ).sum(-1)


def kl_to_standard_normal(mean, log_var):
    """KL(N(mean, diag exp(log_var)) || N(0, I)) in closed form, per row."""
    return 0.5 * (mean.square() + torch.exp(log_var) - log_var - 1.0).sum(-1)


def soft_lower_bound(raw, bound):
    """Map ``raw`` smoothly onto ``(bound, inf)``, keeping gradients everywhere."""
    return bound + F.softplus(raw - bound)


class GeneralizedNormalPrior:
    """Factorised prior p(z) = prod_j c exp(-|z_j / a|^shape), unit variance.

    ``shape=2`` is N(0, I); ``shape=1`` the Laplace distribution; as the
    shape grows the density flattens towards the uniform distribution on
    [-sqrt(3), sqrt(3)]. Any shape other than 2 breaks the rotation
    invariance of N(0, I), which is what lets a VAE identify the rotation of
    independent sources.

    Parameters
    ----------
    shape : float
        Exponent of the density, at least 1.
    """

    def __init__(self, shape):
        self.shape = float(shape)
        # Unit variance: Var = a^2 Gamma(3 / shape) / Gamma(1 / shape).
        self.scale = math.exp(
            0.5 * (math.lgamma(1 / self.shape) - math.lgamma(3 / self.shape))
        )
        self.log_norm = math.log(self.shape / (2 * self.scale)) - math.lgamma(
            1 / self.shape
        )

    def log_prob(self, z):
        """Log-density summed over the last dimension."""
        if self.shape == 2.0:
            return standard_normal_log_prob(z)
        return (self.log_norm - (z.abs() / self.scale) ** self.shape).sum(-1)

    def sample(self, shape, generator, like):
        """Draws from ``generator`` (see :func:`standard_normal`)."""
        if self.shape == 2.0:
            return standard_normal(shape, generator, like)
        # |z / a|^shape ~ Gamma(1 / shape), drawn by inverting its CDF.
        uniform = torch.rand(shape, generator=generator, dtype=torch.float64)
        sign = torch.rand(shape, generator=generator, dtype=torch.float64) < 0.5
        gamma = gammaincinv(1 / self.shape, uniform.numpy())
        magnitude = self.scale * torch.from_numpy(np.power(gamma, 1 / self.shape))
        z = torch.where(sign, -magnitude, magnitude)
        return z.to(dtype=like.dtype, device=like.device)
