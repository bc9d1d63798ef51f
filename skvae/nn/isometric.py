"""The squared-error VAE read as a scaled isometric embedding.

Nakagawa, Kato and Suzuki train a VAE on E_q[D(x, f(z))] + beta KL(q || p)
and read the trained decoder as an isometric embedding of the latent space,
scaled by the posterior standard deviations. With D the sum of squared
errors the loss is beta times the negative ELBO of a Gaussian decoder of
variance beta / 2, plus a constant, so the model here is a
:class:`~skvae.nn.GaussianVAE` with that fixed variance; what it adds are the
quantities the isometric reading gives in one encoder pass.
"""

import torch
from torch.nn import functional as F

from .gaussian import LOG_2PI, standard_normal_log_prob
from .vae import GaussianVAE, _pca_residual_variance

# Least noise variance ``beta="auto"`` picks, as a share of the data's mean
# feature variance; it applies when PCA reconstructs the data exactly.
NOISE_VARIANCE_FLOOR = 1e-3


class IsometricGaussianVAE(GaussianVAE):
    """VAE trained on squared error plus ``beta`` times the KL divergence.

    The loss ``E_q ||x - f(z)||^2 + beta KL(q(z|x) || N(0, I))`` equals
    ``beta`` times the negative ELBO of a Gaussian decoder with variance
    ``beta / 2`` (and KL weight 1) plus a constant, so :meth:`loss` returns
    that negative ELBO in nats and :meth:`log_prob` is the IWAE estimate of the
    same model.

    Parameters
    ----------
    n_features : int
        Dimension of the data.
    n_components : int
        Dimension of the latent space.
    beta : float or None, default=None
        Weight of the KL term against the squared error; the decoder's
        variance is ``beta / 2``. None sets it from the training rows in
        :meth:`initialize_from_data`: twice the noise variance of
        probabilistic PCA with ``n_components`` components, the mean of the
        covariance eigenvalues PCA discards.
    encoder_layers : sequence of int, default=(256, 256)
        Hidden widths of the encoder; empty for an affine encoder.
    decoder_layers : sequence of int or None, default=None
        Hidden widths of the decoder; None mirrors the encoder.
    activation : str, default="silu"
        Non-linearity of both networks (see :class:`~skvae.nn.MLP`).
    encoder, decoder : type or callable, default=None
        Networks to use instead of the MLPs (see
        :class:`~skvae.nn.GaussianVAE`).
    generator : torch.Generator, default=None
        Source of randomness for the initial weights.

    Attributes
    ----------
    noise_variance : torch.Tensor of shape ()
        ``beta / 2``, the decoder's variance, a float64 buffer. (``self.beta``,
        inherited, is the KL weight of the equivalent Gaussian ELBO, which
        is 1.)
    latent_order : torch.Tensor of shape (n_components,)
        A fixed permutation, an int64 buffer: latent ``j`` of every method
        (:meth:`encode`, :meth:`decode`, :meth:`posterior`,
        :meth:`importance`...) is output ``latent_order[j]`` of the encoder
        network and input ``latent_order[j]`` of the decoder network. The
        identity until :meth:`order_latents` ranks the latents; the prior
        is exchangeable, so the order changes no density nor loss.

    Examples
    --------
    >>> import torch
    >>> from skvae.nn import IsometricGaussianVAE
    >>> g = torch.Generator().manual_seed(0)
    >>> vae = IsometricGaussianVAE(5, 2, beta=0.1, encoder_layers=(16,), generator=g)
    >>> x = torch.randn(4, 5, generator=g)
    >>> vae.isometric_log_prob(x).shape, vae.importance(x).shape
    (torch.Size([4]), torch.Size([4, 2]))
    """

    def __init__(
        self,
        n_features,
        n_components,
        beta=None,
        encoder_layers=(256, 256),
        decoder_layers=None,
        activation="silu",
        encoder=None,
        decoder=None,
        generator=None,
    ):
        super().__init__(
            n_features,
            n_components,
            encoder_layers=encoder_layers,
            decoder_layers=decoder_layers,
            activation=activation,
            likelihood="gaussian",
            # The buffer below holds the variance; this only selects a
            # fixed one.
            decoder_variance=1.0,
            beta=1.0,
            encoder=encoder,
            decoder=decoder,
            generator=generator,
        )
        self.fit_noise_variance = beta is None
        # Float64 whatever the module's dtype, so that log(beta / 2) is exact
        # in the float64 copy that scores float64 data.
        self.register_buffer(
            "noise_variance",
            torch.tensor(1.0 if beta is None else beta / 2, dtype=torch.float64),
        )
        self.register_buffer("latent_order", torch.arange(n_components))

    def _apply(self, fn, recurse=True):
        # Keep the noise variance in float64 through dtype moves.
        variance = self.noise_variance
        super()._apply(fn, recurse)
        self.noise_variance = variance.to(self.data_shift.device)
        return self

    def initialize_from_data(self, x):
        """Set the buffers around the networks, and the noise variance when
        ``beta`` was None: the mean of the covariance eigenvalues that PCA
        with ``n_components`` components discards (probabilistic PCA's
        maximum-likelihood noise variance), at least 1e-3 of the mean
        feature variance (of 1 for constant data)."""
        super().initialize_from_data(x)
        if not self.fit_noise_variance:
            return
        centred = x.to(torch.float64) - x.to(torch.float64).mean(0)
        residual = _pca_residual_variance(centred, self.n_components)
        n_discarded = max(1, self.n_features - self.n_components)
        floor = NOISE_VARIANCE_FLOOR * self.data_scale.to(torch.float64) ** 2
        with torch.no_grad():
            self.noise_variance.copy_((residual.sum() / n_discarded).clamp_min(floor))

    def order_latents(self, order):
        """Make the current latent ``order[j]`` latent ``j`` from now on.

        Parameters
        ----------
        order : sequence of int
            A permutation of ``range(n_components)``, in the current order.
        """
        order = torch.as_tensor(order, dtype=torch.int64).cpu()
        if not torch.equal(order.sort().values, torch.arange(self.n_components)):
            raise ValueError(
                f"order must be a permutation of range({self.n_components}), "
                f"got {order.tolist()}."
            )
        with torch.no_grad():
            self.latent_order.copy_(
                self.latent_order[order.to(self.latent_order.device)]
            )

    def posterior(self, x):
        """Mean and log-variance of q(z|x), latents in ``latent_order``."""
        mean, log_var = super().posterior(x)
        return mean[..., self.latent_order], log_var[..., self.latent_order]

    def _decoder_output(self, z):
        return super()._decoder_output(z[..., torch.argsort(self.latent_order)])

    @property
    def decoder_log_var(self):
        """log(beta / 2) for every feature, in the weights' dtype."""
        log_var = torch.log(self.noise_variance).to(self.decoder_offset.dtype)
        return log_var.expand_as(self.decoder_offset)

    def isometric_log_prob(self, x):
        """One-pass estimate of log p(x), per row, in nats.

        ``log p(x, mu) - log q(mu|x)``: the importance weight of the posterior
        mean, equal to::

            log N(mu; 0, I) + sum_j log sigma_j + (n/2) log(2 / beta)
            - ||x - f(mu)||^2 / beta - ((M - n) / 2) log(pi beta).

        It is Laplace's approximation of the marginal with the encoder's
        variances standing in for the inverse Hessian, which they are when the
        decoder's columns are orthogonal and ``||df/dz_j||^2 =
        (beta / 2)(sigma_j^-2 - 1)``; exact for a linear model at its optimum.
        """
        mean, log_var = self.posterior(x)
        log_joint = self.log_likelihood(x, mean) + standard_normal_log_prob(mean)
        return log_joint + 0.5 * (log_var.sum(-1) + self.n_components * LOG_2PI)

    def importance(self, x):
        """``(beta / 2) / sigma_j(x)^2`` per row and latent, ``(n_rows, n)``.

        Its mean over the data is the importance I_j of latent j; on linear
        Gaussian data it is the PCA eigenvalue of the latent's direction, and
        ``beta / 2`` for a latent the decoder ignores.
        """
        log_var = self.posterior(x)[1]
        return self.noise_variance.to(log_var.dtype) * torch.exp(-log_var)

    def isometry(self, x, latents):
        """How far the decoder is from a scaled isometry at each row's code.

        Parameters
        ----------
        x : torch.Tensor of shape (n_rows, n_features)
            Data.
        latents : sequence of int
            The latents to measure, in the order of the output's columns.

        Returns
        -------
        column_norms : torch.Tensor of shape (n_rows, len(latents))
            ``||df/dz_j|| / sqrt((beta / 2)(sigma_j^-2 - 1))`` at ``mu(x)``:
            the column norms in the isometric coordinates, 1 at the optimum.
        max_cosine : torch.Tensor of shape (n_rows,)
            Largest ``|cos|`` between two of the columns; 0 when they are
            orthogonal, and 0 for fewer than two latents.
        """
        mean, log_var = self.posterior(x)
        latents = list(latents)
        jacobian = self.decoder_jacobian(mean)[..., latents]
        norms = torch.linalg.vector_norm(jacobian, dim=1)
        # A row whose posterior is as wide as the prior has an ideal norm of 0;
        # the floor keeps its ratio finite (and large: not isometric there).
        floor = torch.finfo(log_var.dtype).eps
        ideal = torch.sqrt(
            self.noise_variance.to(log_var.dtype)
            * torch.expm1(-log_var[:, latents]).clamp_min(floor)
        )
        unit = jacobian / norms.clamp_min(torch.finfo(norms.dtype).tiny).unsqueeze(1)
        cosines = (unit.transpose(1, 2) @ unit).abs()
        off_diagonal = cosines - torch.diag_embed(torch.diagonal(cosines, 0, 1, 2))
        # The zero column padded on gives fewer than two latents a maximum of 0.
        max_cosine = F.pad(off_diagonal.flatten(1), (0, 1)).amax(1)
        return norms / ideal, max_cosine
