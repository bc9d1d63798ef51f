"""Log-densities of the distributions the models are built from."""

import math

import torch
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
