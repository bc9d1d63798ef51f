"""The Gaussian-encoder variational autoencoder."""

import itertools
import math

import torch
from torch import nn

from .base import LatentVariableModel, build_network
from .gaussian import (
    GeneralizedNormalPrior,
    bernoulli_log_prob,
    diagonal_normal_log_prob,
    kl_to_standard_normal,
    soft_lower_bound,
    standard_normal,
    standard_normal_log_prob,
)

# Encoder log-variances outside this range carry no information a float32
# network can use, and exp() of them overflows or underflows.
ENCODER_LOG_VAR_RANGE = (-30.0, 10.0)
# A learned decoder variance may not shrink below 1e-6 of the data's scale
# squared: a Gaussian whose variance collapses onto a data point has
# unbounded likelihood.
DECODER_LOG_VAR_MIN = math.log(1e-6)
# A heteroscedastic decoder's variance, one per code, may not shrink below
# 0.3 % of the data's mean feature variance. A variance per code can sit on a
# value the data repeat exactly (the zero background of images), where the
# likelihood has no bound, so training spends the codes on predicting those
# exact values: at 1e-6, 2-D codes of MNIST scored 0.379 in 5-NN accuracy
# against PCA's 0.430; at 3e-3, 0.520, and the dequantized digits' density
# rose from 75.3 to 76.0 nats (their noise is 0.44 % of the mean variance).
HETEROSCEDASTIC_LOG_VAR_MIN = math.log(3e-3)
# Floor of a learned decoder variance's starting value, as a share of the
# data's mean feature variance, for features PCA reconstructs exactly
# (n_components >= n_features). Started sharper, the decoder forces
# near-deterministic codes early and the fit settles close to one Gaussian:
# held-out two moons at k=2 scored -2.67 nats/row from 1e-3 and -2.07 from
# 0.03, against -2.72 for one Gaussian (docs/user_guide/vae.rst).
INITIAL_VARIANCE_FLOOR = 0.03


class GaussianVAE(LatentVariableModel):
    """VAE with encoder N(mu(x), diag sigma^2(x)), prior N(0, I), and a
    Gaussian or Bernoulli decoder.

    The encoder and decoder networks are black boxes that map rows to rows:
    the encoder ``(n_rows, n_features) -> (n_rows, 2 * n_components)``
    (posterior means, then raw log-variances), the decoder
    ``(n_rows, n_components) -> (n_rows, n_features)``, or
    ``2 * n_features`` outputs for a heteroscedastic decoder (means, then
    log-variances). Everything the model needs around them lives in fixed
    buffers, set from the training rows by :meth:`initialize_from_data`:
    the encoder sees rows centred and divided by one scale, the decoder's
    outputs are scaled back, and its log-variances are offset to start near
    the residual variance of PCA. The importance samples of :meth:`log_prob`
    are folded into the rows before they reach the decoder, so a network
    only ever sees 2-D batches.

    Parameters
    ----------
    n_features : int
        Dimension of the data.
    n_components : int
        Dimension of the latent space.
    encoder_layers : sequence of int, default=(256, 256)
        Hidden widths of the MLP encoder; empty for an affine encoder. Unused
        when ``encoder`` is given.
    decoder_layers : sequence of int or None, default=None
        Hidden widths of the MLP decoder; None mirrors the encoder. Unused
        when ``decoder`` is given.
    activation : str, default="silu"
        Non-linearity of the MLPs (see :class:`~skvae.nn.MLP`).
    likelihood : {"gaussian", "bernoulli"}, default="gaussian"
        Decoder distribution p(x|z).
    decoder_variance : {"learned", "heteroscedastic"} or float, default="learned"
        Variance of a Gaussian decoder: one learned value per feature; one
        per feature and per code, output by the decoder network beside the
        mean; or a fixed positive number in the squared units of the data
        (small values give the near-deterministic regime).
    beta : float, default=1.0
        Weight of the KL term in the training loss. The density of the model
        (:meth:`log_prob`) does not depend on it.
    prior_shape : float, default=2.0
        Shape of the factorised generalized-normal prior with unit variance
        (``skvae.nn.gaussian.GeneralizedNormalPrior``): 2 is
        N(0, I), with the KL term in closed form; any other shape uses a
        one-draw estimate of it.
    encoder, decoder : type or callable, default=None
        Networks to use instead of the MLPs: an ``nn.Module`` class or a
        callable ``(n_inputs, n_outputs) -> nn.Module`` (see
        :func:`~skvae.nn.base.build_network`).
    generator : torch.Generator, default=None
        Source of randomness for the initial weights of the MLPs.

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
        encoder=None,
        decoder=None,
        generator=None,
    ):
        super().__init__()
        self.prior = GeneralizedNormalPrior(prior_shape)
        if decoder_layers is None:
            decoder_layers = tuple(reversed(encoder_layers))
        self.n_features = n_features
        self.n_components = n_components
        self.likelihood = likelihood
        self.beta = beta
        self.heteroscedastic = (
            likelihood == "gaussian" and decoder_variance == "heteroscedastic"
        )
        self.learned_variance = likelihood == "gaussian" and decoder_variance in (
            "learned",
            "heteroscedastic",
        )
        self.fixed_variance = (
            None
            if likelihood != "gaussian" or self.learned_variance
            else float(decoder_variance)
        )
        self.encoder = build_network(
            encoder, n_features, 2 * n_components, encoder_layers, activation, generator
        )
        self.decoder = build_network(
            decoder,
            n_components,
            2 * n_features if self.heteroscedastic else n_features,
            decoder_layers,
            activation,
            generator,
        )
        if likelihood == "gaussian" and decoder_variance == "learned":
            self.decoder_log_var_raw = nn.Parameter(torch.zeros(n_features))
        # Identity until initialize_from_data: x is seen as (x - shift) / scale.
        self.register_buffer("data_shift", torch.zeros(n_features))
        self.register_buffer("data_scale", torch.ones(()))
        # Added to the decoder's raw log-variances (or, for a Bernoulli
        # decoder, to its logits) so that training starts near the data.
        self.register_buffer("decoder_offset", torch.zeros(n_features))

    def initialize_from_data(self, x):
        """Set the fixed buffers around the networks from the training rows.

        The encoder sees rows centred on the data mean and divided by the
        root mean feature variance; the decoder's output is scaled back and
        starts at the data mean (for a Bernoulli decoder, at its logit), so
        training need not first learn the data's location and units. A
        learned decoder variance starts at each feature's residual variance
        after PCA with ``n_components`` components, the optimum of the linear
        model: started larger (at 1, or at a fixed share of the variance), a
        decoder explains structure as noise and latents collapse before the
        encoder has learned to use them.
        """
        x = x.to(torch.float64)
        mean = x.mean(0)
        centred = x - mean
        variance = centred.square().mean(0)
        scale = variance.mean().sqrt()
        scale = torch.where(scale > 0, scale, torch.ones_like(scale))
        with torch.no_grad():
            self.data_shift.copy_(mean)
            self.data_scale.copy_(scale)
            if self.likelihood == "bernoulli":
                self.decoder_offset.copy_(torch.logit(mean, eps=1e-4))
            elif self.learned_variance:
                residual = _pca_residual_variance(centred / scale, self.n_components)
                # Standardized units: the mean feature variance is 1.
                self.decoder_offset.copy_(
                    torch.log(residual.clamp_min(INITIAL_VARIANCE_FLOOR))
                )

    def _decoder_output(self, z):
        """The decoder network on codes of any leading shape, as 2-D rows."""
        out = self.decoder(z.reshape(-1, self.n_components))
        return out.reshape(*z.shape[:-1], out.shape[-1])

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
            return self._scaled_log_var(self.decoder_log_var_raw)
        return torch.full_like(self.decoder_offset, math.log(self.fixed_variance))

    def _scaled_log_var(self, raw, floor=DECODER_LOG_VAR_MIN):
        # The floor is relative to the data's scale, like everything learned.
        standardized = soft_lower_bound(raw + self.decoder_offset, floor)
        return standardized + 2 * torch.log(self.data_scale)

    def decoder_mean_and_log_var(self, z):
        """Mean and log-variance of a Gaussian p(x|z), each ``(..., n_features)``.

        In the units of the data. The log-variance broadcasts against the
        mean: it has one value per feature unless the decoder is
        heteroscedastic.
        """
        out = self._decoder_output(z)
        if self.heteroscedastic:
            out, raw = out.chunk(2, dim=-1)
            log_var = self._scaled_log_var(raw, HETEROSCEDASTIC_LOG_VAR_MIN)
        else:
            log_var = self.decoder_log_var
        return self.data_shift + self.data_scale * out, log_var

    def posterior(self, x):
        """Mean and log-variance of q(z|x), each ``(n_rows, n_components)``."""
        standardized = (x - self.data_shift) / self.data_scale
        mean, log_var = self.encoder(standardized).chunk(2, dim=-1)
        return mean, log_var.clamp(*ENCODER_LOG_VAR_RANGE)

    def log_likelihood(self, x, z):
        """log p(x|z) for ``z`` of shape ``(..., n_rows, n_components)``."""
        if self.likelihood == "bernoulli":
            return bernoulli_log_prob(x, self._logits(z))
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

    def _logits(self, z):
        return self._decoder_output(z) + self.decoder_offset

    def decode(self, z):
        if self.likelihood == "bernoulli":
            return torch.sigmoid(self._logits(z))
        return self.decoder_mean_and_log_var(z)[0]

    def importance_log_weights(self, x, generator, n_samples, proposal=None):
        """log p(x, z_k) - log q(z_k|x) for K draws z_k ~ q, shape ``(K, n_rows)``.

        Parameters
        ----------
        x : torch.Tensor of shape (n_rows, n_features)
            Data.
        generator : torch.Generator
            Source of the K standard-normal draws, shared by every row
            (common random numbers), so each row's weights depend on that
            row alone.
        n_samples : int
            K.
        proposal : tuple of torch.Tensor, default=None
            Mean and log-variance, each ``(n_rows, n_components)``, of the
            diagonal Gaussian q to draw from; None is the encoder's
            posterior q(z|x).

        Returns
        -------
        log_weights : torch.Tensor of shape (n_samples, n_rows)
        """
        mean, log_var = self.posterior(x) if proposal is None else proposal
        eps = standard_normal((n_samples, 1, self.n_components), generator, like=mean)
        z = mean + torch.exp(0.5 * log_var) * eps
        # log q(z|x) written with eps avoids cancelling (z - mean) / sigma.
        log_q = standard_normal_log_prob(eps) - 0.5 * log_var.sum(-1)
        return self.log_likelihood(x, z) + self.prior.log_prob(z) - log_q

    def log_prob(
        self, x, generator, n_samples=100, samples_per_pass=None, proposal=None
    ):
        """Importance-weighted (IWAE) estimate of log p(x) with K draws.

        The draws come from ``proposal``, as in
        :meth:`importance_log_weights`: the encoder's posterior by default.

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
            log_w = self.importance_log_weights(
                x, generator, n_samples, proposal=proposal
            )
            return torch.logsumexp(log_w, dim=0) - math.log(n_samples)
        starts = list(range(0, n_samples, per_pass))
        # A last pass of fewer than 16 numbers would draw them another way.
        if (n_samples - starts[-1]) * self.n_components < 16:
            starts.pop()
        total = None
        for start, stop in itertools.pairwise([*starts, n_samples]):
            part = torch.logsumexp(
                self.importance_log_weights(
                    x, generator, stop - start, proposal=proposal
                ),
                dim=0,
            )
            total = part if total is None else torch.logaddexp(total, part)
        return total - math.log(n_samples)

    def sample(self, n_samples, generator):
        like = self.data_shift
        z = self.prior.sample((n_samples, self.n_components), generator, like=like)
        if self.likelihood == "bernoulli":
            probabilities = torch.sigmoid(self._logits(z))
            # Drawn on the generator's device (the CPU), like every draw.
            return torch.bernoulli(probabilities.cpu(), generator=generator).to(
                like.device
            )
        mean, log_var = self.decoder_mean_and_log_var(z)
        noise = standard_normal(mean.shape, generator, like=mean)
        return mean + torch.exp(0.5 * log_var) * noise


def _pca_residual_variance(centred, n_components):
    """Per-feature variance PCA with ``n_components`` components leaves unexplained.

    The diagonal of the covariance minus its rank-``n_components``
    eigen-approximation: the decoder variance of probabilistic PCA's optimum,
    feature by feature.
    """
    covariance = centred.T @ centred / len(centred)
    eigval, eigvec = torch.linalg.eigh(covariance)
    kept = eigvec[:, eigval.argsort(descending=True)[:n_components]]
    explained = (kept @ (kept.T @ covariance)).diagonal()
    return (covariance.diagonal() - explained).clamp_min(0.0)
