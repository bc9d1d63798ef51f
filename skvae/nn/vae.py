"""The Gaussian-encoder variational autoencoder."""

import itertools
import math

import torch
from torch import nn

from .base import LatentVariableModel
from .gaussian import (
    GeneralizedNormalPrior,
    bernoulli_log_prob,
    diagonal_normal_log_prob,
    kl_to_standard_normal,
    soft_lower_bound,
    standard_normal,
    standard_normal_log_prob,
)
from .mlp import MLP

# Encoder log-variances outside this range carry no information a float32
# network can use, and exp() of them overflows or underflows.
ENCODER_LOG_VAR_RANGE = (-30.0, 10.0)
# A learned decoder variance may not shrink below 1e-6: a Gaussian whose
# variance collapses onto a data point has unbounded likelihood.
DECODER_LOG_VAR_MIN = math.log(1e-6)
# Share of each feature's variance a learned decoder variance starts at.
INITIAL_VARIANCE_FRACTION = 0.3


class GaussianVAE(LatentVariableModel):
    """VAE with encoder N(mu(x), diag sigma^2(x)), prior N(0, I), and a
    Gaussian or Bernoulli decoder.

    Parameters
    ----------
    n_features : int
        Dimension of the data.
    n_components : int
        Dimension of the latent space.
    encoder_layers : sequence of int, default=(256, 256)
        Hidden widths of the encoder; empty for an affine encoder.
    decoder_layers : sequence of int or None, default=None
        Hidden widths of the decoder; None mirrors the encoder.
    activation : str, default="silu"
        Non-linearity of both networks (see :class:`~skvae.nn.MLP`).
    likelihood : {"gaussian", "bernoulli"}, default="gaussian"
        Decoder distribution p(x|z).
    decoder_variance : {"learned", "heteroscedastic"} or float, default="learned"
        Variance of a Gaussian decoder: one learned value per feature; one
        per feature and per code, output by the decoder network beside the
        mean; or a fixed positive number (small values give the
        near-deterministic regime).
    beta : float, default=1.0
        Weight of the KL term in the training loss. The density of the model
        (:meth:`log_prob`) does not depend on it.
    prior_shape : float, default=2.0
        Shape of the factorised generalized-normal prior with unit variance
        (``skvae.nn.gaussian.GeneralizedNormalPrior``): 2 is
        N(0, I), with the KL term in closed form; any other shape uses a
        one-draw estimate of it.
    generator : torch.Generator, default=None
        Source of randomness for the initial weights.

    Examples
    --------
    >>> import torch
    >>> from skvae.nn import GaussianVAE
    >>> g = torch.Generator().manual_seed(0)
    >>> vae = GaussianVAE(5, 2, encoder_layers=(16,), generator=g)
    >>> x = torch.randn(4, 5, generator=g)
    >>> vae.loss(x, g).shape, vae.log_prob(x, g, n_samples=10).shape
    (torch.Size([4]), torch.Size([4]))
    """

    def __init__(
        self,
        n_features,
        n_components,
        encoder_layers=(256, 256),
        decoder_layers=None,
        activation="silu",
        likelihood="gaussian",
        decoder_variance="learned",
        beta=1.0,
        prior_shape=2.0,
        generator=None,
    ):
        super().__init__()
        self.prior = GeneralizedNormalPrior(prior_shape)
        if decoder_layers is None:
            decoder_layers = tuple(reversed(encoder_layers))
        self.n_components = n_components
        self.decoder_widths = tuple(decoder_layers)
        self.likelihood = likelihood
        self.beta = beta
        self.encoder = MLP(
            n_features,
            encoder_layers,
            2 * n_components,
            activation,
            generator=generator,
        )
        self.heteroscedastic = (
            likelihood == "gaussian" and decoder_variance == "heteroscedastic"
        )
        self.decoder = MLP(
            n_components,
            decoder_layers,
            2 * n_features if self.heteroscedastic else n_features,
            activation,
            generator=generator,
        )
        if likelihood == "gaussian" and decoder_variance == "learned":
            self.decoder_log_var_raw = nn.Parameter(torch.zeros(n_features))
        elif likelihood == "gaussian" and not self.heteroscedastic:
            self.register_buffer(
                "decoder_log_var_raw",
                torch.full((n_features,), math.log(decoder_variance)),
            )
            self.decoder_log_var_raw.requires_grad_(False)
        self.learned_variance = decoder_variance in ("learned", "heteroscedastic")

    def initialize_from_data(self, x, variance_fraction=INITIAL_VARIANCE_FRACTION):
        """Start centred on the data, with a decoder that must use its code.

        The encoder's first layer is shifted to see centred rows and the
        decoder's output starts at the data mean (for a Bernoulli decoder, at
        its logit), so training need not first learn the offset. A learned
        decoder variance starts at ``variance_fraction`` of each feature's
        variance: started at 1, a decoder explains the data as noise, every
        latent collapses and stays collapsed for hundreds of epochs.
        """
        mean = x.mean(0)
        n_features = x.shape[1]
        with torch.no_grad():
            first, last = self.encoder[0], self.decoder[-1]
            first.bias -= first.weight @ mean
            if self.likelihood == "bernoulli":
                last.bias.copy_(torch.logit(mean, eps=1e-4))
            else:
                last.bias[:n_features] = mean
            if self.likelihood == "gaussian" and self.learned_variance:
                variance = variance_fraction * x.var(0, correction=0)
                log_var = torch.log(variance.clamp_min(1e-5))
                # Invert soft_lower_bound so that the log-variance starts at log_var.
                excess = log_var - DECODER_LOG_VAR_MIN
                raw = DECODER_LOG_VAR_MIN + excess + torch.log(-torch.expm1(-excess))
                if self.heteroscedastic:
                    last.bias[n_features:] = raw
                else:
                    self.decoder_log_var_raw.copy_(raw)

    @property
    def decoder_log_var(self):
        """Per-feature log-variance of a homoscedastic Gaussian decoder."""
        if self.heteroscedastic:
            # Not AttributeError: nn.Module.__getattr__ would hide the message.
            raise TypeError(
                "a heteroscedastic decoder has no single log-variance per feature; "
                "use decoder_mean_and_log_var(z)."
            )
        if self.learned_variance:
            return soft_lower_bound(self.decoder_log_var_raw, DECODER_LOG_VAR_MIN)
        return self.decoder_log_var_raw

    def decoder_mean_and_log_var(self, z):
        """Mean and log-variance of a Gaussian p(x|z), each ``(..., n_features)``.

        The log-variance broadcasts against the mean: it has one value per
        feature unless the decoder is heteroscedastic.
        """
        out = self.decoder(z)
        if self.heteroscedastic:
            mean, raw = out.chunk(2, dim=-1)
            return mean, soft_lower_bound(raw, DECODER_LOG_VAR_MIN)
        return out, self.decoder_log_var

    def posterior(self, x):
        """Mean and log-variance of q(z|x), each ``(n_rows, n_components)``."""
        mean, log_var = self.encoder(x).chunk(2, dim=-1)
        return mean, log_var.clamp(*ENCODER_LOG_VAR_RANGE)

    def log_likelihood(self, x, z):
        """log p(x|z) for ``z`` of shape ``(..., n_rows, n_components)``."""
        if self.likelihood == "bernoulli":
            return bernoulli_log_prob(x, self.decoder(z))
        return diagonal_normal_log_prob(x, *self.decoder_mean_and_log_var(z))

    def elbo_terms(self, x, generator):
        """One-draw reconstruction term E_q[log p(x|z)] and KL, per row.

        The KL term is exact for the standard normal prior and a one-draw
        estimate, log q(z|x) - log p(z) at the same z, for any other.
        """
        mean, log_var = self.posterior(x)
        eps = standard_normal(mean.shape, generator, like=mean)
        z = mean + torch.exp(0.5 * log_var) * eps
        if self.prior.shape == 2.0:
            kl = kl_to_standard_normal(mean, log_var)
        else:
            log_q = standard_normal_log_prob(eps) - 0.5 * log_var.sum(-1)
            kl = log_q - self.prior.log_prob(z)
        return self.log_likelihood(x, z), kl

    def loss(self, x, generator):
        reconstruction, kl = self.elbo_terms(x, generator)
        return -reconstruction + self.beta * kl

    def encode(self, x):
        return self.posterior(x)[0]

    def decode(self, z):
        if self.likelihood == "bernoulli":
            return torch.sigmoid(self.decoder(z))
        return self.decoder_mean_and_log_var(z)[0]

    def importance_log_weights(self, x, generator, n_samples):
        """log p(x, z_k) - log q(z_k|x) for K draws, shape ``(K, n_rows)``.

        The K standard-normal draws are shared by every row (common random
        numbers), so each row's weights depend on that row alone.
        """
        mean, log_var = self.posterior(x)
        eps = standard_normal((n_samples, 1, self.n_components), generator, like=mean)
        z = mean + torch.exp(0.5 * log_var) * eps
        # log q(z|x) written with eps avoids cancelling (z - mean) / sigma.
        log_q = standard_normal_log_prob(eps) - 0.5 * log_var.sum(-1)
        return self.log_likelihood(x, z) + self.prior.log_prob(z) - log_q

    def log_prob(self, x, generator, n_samples=100, samples_per_pass=None):
        """Importance-weighted (IWAE) estimate of log p(x) with K draws.

        ``samples_per_pass`` bounds the draws evaluated at once, and with
        them the memory, whatever K: each pass draws its share from
        ``generator`` in turn and is reduced to one log-sum-exp before the
        next. None evaluates all K at once. The passes are rounded to whole
        blocks of 16 normal numbers, the block in which torch's CPU sampler
        draws them, so that they draw the numbers one call for all K would
        and the estimate does not depend on the split, up to rounding.
        """
        step = 16 // math.gcd(16, self.n_components)
        per_pass = n_samples
        if samples_per_pass is not None:
            per_pass = max(step, samples_per_pass // step * step)
        if per_pass >= n_samples:
            log_w = self.importance_log_weights(x, generator, n_samples)
            return torch.logsumexp(log_w, dim=0) - math.log(n_samples)
        starts = list(range(0, n_samples, per_pass))
        # A last pass of fewer than 16 numbers would draw them another way.
        if (n_samples - starts[-1]) * self.n_components < 16:
            starts.pop()
        total = None
        for start, stop in itertools.pairwise([*starts, n_samples]):
            part = torch.logsumexp(
                self.importance_log_weights(x, generator, stop - start), dim=0
            )
            total = part if total is None else torch.logaddexp(total, part)
        return total - math.log(n_samples)

    def sample(self, n_samples, generator):
        weight = self.decoder[0].weight
        z = self.prior.sample((n_samples, self.n_components), generator, like=weight)
        if self.likelihood == "bernoulli":
            probabilities = torch.sigmoid(self.decoder(z))
            # Drawn on the generator's device (the CPU), like every draw.
            return torch.bernoulli(probabilities.cpu(), generator=generator).to(
                weight.device
            )
        mean, log_var = self.decoder_mean_and_log_var(z)
        noise = standard_normal(mean.shape, generator, like=mean)
        return mean + torch.exp(0.5 * log_var) * noise
