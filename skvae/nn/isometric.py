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
# feature variance; it applies when PCA reconstructs the data exactly. The
# same floor bounds each feature's noise with ``noise="per_feature"``, where
# factor analysis gives a feature that the factors explain exactly (a Heywood
# case) no noise at all.
NOISE_VARIANCE_FLOOR = 1e-3

# Factor analysis stops when an iteration raises the total log-likelihood of
# the rows by less than this, scikit-learn's default ``tol``.
FACTOR_ANALYSIS_TOL = 1e-2
FACTOR_ANALYSIS_MAX_ITER = 1000


def _factor_analysis_noise(centred, n_components):
    """Maximum-likelihood noise variances of factor analysis, per feature.

    The model ``x = W z + e`` with ``z ~ N(0, I_k)`` and ``e ~ N(0,
    diag(psi))``, fitted by the SVD algorithm of Barber (2012, algorithm
    21.1), as :class:`sklearn.decomposition.FactorAnalysis` does, but on the
    covariance: each iteration is one eigendecomposition of a
    ``n_features`` x ``n_features`` matrix, whatever the number of rows.

    Parameters
    ----------
    centred : torch.Tensor of shape (n_rows, n_features)
        Rows with their mean removed, float64.
    n_components : int
        Number of factors ``k``.

    Returns
    -------
    psi : torch.Tensor of shape (n_features,)
        Noise variance of each feature, non-negative.
    """
    n_rows, n_features = centred.shape
    covariance = centred.T @ centred / n_rows
    variance = covariance.diagonal()
    tiny = 1e-12
    psi = torch.ones_like(variance)
    constant = n_features * LOG_2PI + n_components
    n_discarded = n_features - n_components
    previous = -torch.inf
    for _ in range(FACTOR_ANALYSIS_MAX_ITER):
        root = psi.sqrt() + tiny
        eigval, eigvec = torch.linalg.eigh(covariance / root / root.unsqueeze(1))
        # eigh sorts ascending: the factors are the last k eigenvectors.
        top, axes = eigval[n_discarded:], eigvec[:, n_discarded:]
        unexplained = eigval[:n_discarded].sum()
        log_likelihood = (
            -0.5
            * n_rows
            * float(constant + top.log().sum() + unexplained + psi.log().sum())
        )
        if log_likelihood - previous < FACTOR_ANALYSIS_TOL:
            break
        previous = log_likelihood
        loadings = axes * (top - 1).clamp_min(0).sqrt() * root.unsqueeze(1)
        psi = (variance - loadings.square().sum(1)).clamp_min(tiny)
    return psi


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
        variance is ``beta / 2`` (times each feature's weight with
        ``noise="per_feature"``). None sets it from the training rows in
        :meth:`initialize_from_data`: twice the noise variance of
        probabilistic PCA with ``n_components`` components, the mean of the
        covariance eigenvalues PCA discards; with ``noise="per_feature"``,
        twice the mean of factor analysis's noise variances.
    noise : {"isotropic", "per_feature"}, default="isotropic"
        The distortion ``D``. ``"isotropic"``: the sum of squared errors, one
        noise variance for every feature. ``"per_feature"``: the squared
        errors weighted by ``1 / w_i``, where ``w_i`` is feature ``i``'s noise
        variance under factor analysis with ``n_components`` factors (the
        linear model's optimum), over their mean, set by
        :meth:`initialize_from_data`; the decoder's variance of feature ``i``
        is ``(beta / 2) w_i``, and the isometry holds in the metric
        ``diag(1 / w)``.
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
    noise_weights : torch.Tensor of shape (n_features,)
        The weights ``w`` of the metric, a float64 buffer of mean 1: all 1
        for ``noise="isotropic"``, and until :meth:`initialize_from_data`.
        The decoder's variance of feature ``i`` is ``noise_variance * w_i``.
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
        noise="isotropic",
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
        if noise not in ("isotropic", "per_feature"):
            raise ValueError(
                f"noise must be 'isotropic' or 'per_feature', got {noise!r}."
            )
        self.fit_noise_variance = beta is None
        self.noise = noise
        # Float64 whatever the module's dtype, so that log(beta / 2) is exact
        # in the float64 copy that scores float64 data.
        self.register_buffer(
            "noise_variance",
            torch.tensor(1.0 if beta is None else beta / 2, dtype=torch.float64),
        )
        self.register_buffer(
            "noise_weights", torch.ones(n_features, dtype=torch.float64)
        )
        self.register_buffer("latent_order", torch.arange(n_components))

    def _apply(self, fn, recurse=True):
        # Keep the noise variance and the metric in float64 through dtype moves.
        variance, weights = self.noise_variance, self.noise_weights
        super()._apply(fn, recurse)
        self.noise_variance = variance.to(self.data_shift.device)
        self.noise_weights = weights.to(self.data_shift.device)
        return self

    def _load_from_state_dict(self, state_dict, prefix, *args):
        # Weights read from a file: a noise variance or weight that is not
        # positive would turn every density into NaN without an error.
        *_, error_msgs = args
        for name in ("noise_variance", "noise_weights"):
            value = state_dict.get(prefix + name)
            if value is not None and not bool((value > 0).all()):
                error_msgs.append(f"{prefix}{name} must be positive.")
        super()._load_from_state_dict(state_dict, prefix, *args)

    def initialize_from_data(self, x):
        """Set the buffers around the networks, the metric, and the noise
        variance when ``beta`` was None.

        With ``noise="isotropic"`` the noise variance is the mean of the
        covariance eigenvalues that PCA with ``n_components`` components
        discards (probabilistic PCA's maximum-likelihood noise variance).
        With ``"per_feature"`` each feature's noise is factor analysis's
        with ``n_components`` factors, by the algorithm of scikit-learn's
        ``FactorAnalysis(svd_method="lapack")``: the weights are those
        variances over their mean, and the noise variance their mean (a
        ``beta`` given keeps its value and scales the weights). Noise
        variances are at least 1e-3 of the mean feature variance (of 1 for
        constant data).
        """
        super().initialize_from_data(x)
        if self.noise == "isotropic" and not self.fit_noise_variance:
            return
        x = x.to(torch.float64)
        centred = x - x.mean(0)
        floor = NOISE_VARIANCE_FLOOR * self.data_scale.to(torch.float64) ** 2
        if self.noise == "per_feature":
            per_feature = _factor_analysis_noise(centred, self.n_components)
            per_feature = per_feature.clamp_min(floor)
            mean_noise = per_feature.mean()
            with torch.no_grad():
                self.noise_weights.copy_(per_feature / mean_noise)
        else:
            residual = _pca_residual_variance(centred, self.n_components)
            n_discarded = max(1, self.n_features - self.n_components)
            mean_noise = (residual.sum() / n_discarded).clamp_min(floor)
        if self.fit_noise_variance:
            with torch.no_grad():
                self.noise_variance.copy_(mean_noise)

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
        """log((beta / 2) w_i) for each feature ``i``, in the weights' dtype."""
        log_var = torch.log(self.noise_variance * self.noise_weights)
        return log_var.to(self.decoder_offset.dtype)

    def isometric_log_prob(self, x):
        """One-pass estimate of log p(x), per row, in nats.

        ``log p(x, mu) - log q(mu|x)``: the importance weight of the posterior
        mean, equal to::

            log N(mu; 0, I) + sum_j log sigma_j + (n/2) log(2 / beta)
            - ||x - f(mu)||_w^2 / beta - ((M - n) / 2) log(pi beta)
            - (1/2) sum_i log w_i,

        where ``||v||_w^2 = sum_i v_i^2 / w_i`` (``w = 1`` for isotropic
        noise). It is Laplace's approximation of the marginal with the
        encoder's variances standing in for the inverse Hessian, which they
        are when the decoder's columns are orthogonal in that metric and
        ``||df/dz_j||_w^2 = (beta / 2)(sigma_j^-2 - 1)``; exact for a linear
        model at its optimum.
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
            ``||df/dz_j||_w / sqrt((beta / 2)(sigma_j^-2 - 1))`` at ``mu(x)``:
            the column norms in the isometric coordinates, 1 at the optimum.
            Norms and angles are those of the metric ``diag(1 / w)`` of
            ``noise_weights``: the Euclidean ones for isotropic noise.
        max_cosine : torch.Tensor of shape (n_rows,)
            Largest ``|cos|`` between two of the columns; 0 when they are
            orthogonal, and 0 for fewer than two latents.
        """
        mean, log_var = self.posterior(x)
        latents = list(latents)
        jacobian = self.decoder_jacobian(mean)[..., latents]
        metric_root = self.noise_weights.to(jacobian.dtype).rsqrt()
        jacobian = jacobian * metric_root.unsqueeze(1)
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
