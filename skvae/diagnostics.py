"""Diagnostics of fitted latent-variable models: inference gaps, self-consistency,
independent mechanism analysis, latent recovery and entropy.

Each function takes a fitted skvae estimator (and data) and returns plain
arrays or a :class:`~sklearn.utils.Bunch`. Functions that need the encoder's
Gaussian posterior (:func:`amortization_gap`, :func:`self_consistency`) accept
estimators whose ``module_`` is a :class:`~skvae.nn.GaussianVAE`;
:func:`ima_contrast` and :func:`decoder_jacobian_spectrum` need only an
encoder and a decoder (every estimator, :class:`~skvae.INNAutoencoder`
included), and :func:`mean_correlation_coefficient` and :func:`knn_entropy`
only arrays.

The fitted model is reached through :class:`skvae.inference.FittedModule`,
as the estimators' own methods reach it: on the estimator's device, in
float64 for float64 input, in chunks of rows sized by the measured cost of
what runs on them. Decoder Jacobians are taken in reverse mode
(:meth:`skvae.nn.LatentVariableModel.decoder_jacobian`).
"""

from numbers import Integral, Real

import numpy as np
import scipy.sparse as sp
import torch
from scipy.optimize import linear_sum_assignment
from scipy.special import digamma, gammaln
from sklearn.neighbors import NearestNeighbors
from sklearn.utils import Bunch, check_random_state
from sklearn.utils._param_validation import Interval, validate_params
from sklearn.utils.validation import check_array, check_is_fitted, validate_data

from ._base import _SEED_BOUND, FLOAT_DTYPES
from .inference import FittedModule
from .nn.gaussian import kl_to_standard_normal, standard_normal
from .nn.vae import ENCODER_LOG_VAR_RANGE, GaussianVAE

__all__ = [
    "amortization_gap",
    "decoder_jacobian_spectrum",
    "ima_contrast",
    "knn_entropy",
    "mean_correlation_coefficient",
    "self_consistency",
]

_POSITIVE_INT = [Interval(Integral, 1, None, closed="left")]

# Monte Carlo draws evaluated at once when estimating an ELBO or log p(x);
# larger counts are accumulated block by block so memory stays bounded.
_SAMPLE_BLOCK = 256
# The per-row optimisation of amortization_gap checks its progress on this
# many fixed draws (fewer place the optimum less precisely), shrinks its step
# by _STEP_DECAY at each plateau of the loss, and stops at the _PLATEAUS-th.
_CHECK_SAMPLES = 4 * _SAMPLE_BLOCK
_STEP_DECAY = 0.2
_PLATEAUS = 3


# -- validation and plumbing ---------------------------------------------------


def _fitted_module(est, function, gaussian_vae=False):
    """The fitted torch module of ``est``, checked for what ``function`` needs."""
    check_is_fitted(est)
    module = getattr(est, "module_", None)
    if gaussian_vae and not isinstance(module, GaussianVAE):
        raise TypeError(
            f"{function} needs the encoder's Gaussian posterior: an estimator whose "
            "module_ is a skvae.nn.GaussianVAE (VAETransformer, IsometricVAE), but "
            f"{type(est).__name__}.module_ is of type {type(module).__name__}."
        )
    if not (hasattr(module, "encode") and hasattr(module, "decode")):
        raise TypeError(
            f"{function} needs a fitted skvae estimator with an encoder and a "
            f"decoder (module_.encode and module_.decode); got {type(est).__name__}."
        )
    return module


def _check_X(est, X):
    X = validate_data(est, X, accept_sparse="csr", dtype=FLOAT_DTYPES, reset=False)
    return X.toarray() if sp.issparse(X) else X


def _check_Z(est, Z):
    Z = check_array(Z, dtype=FLOAT_DTYPES, input_name="Z")
    if Z.shape[1] != est.n_components:
        raise ValueError(
            f"Z has {Z.shape[1]} columns, but {type(est).__name__} has "
            f"n_components={est.n_components} latents."
        )
    return Z


def _encode(module, x):
    return module.encode(x)


def _decode(module, z):
    return module.decode(z)


def _posterior(module, x):
    return module.posterior(x)


def _map_jacobians(est, fitted, Z, reduce):
    """``reduce(J, z)`` over chunks of the latents ``Z`` (an ndarray), with
    ``J`` the decoder's Jacobian at each row of ``z``, for the estimator
    ``est`` evaluated by ``fitted``.

    ``reduce`` returns a tuple of tensors with one row per latent; the result
    holds one ndarray per tuple entry, in Z's dtype.
    """
    # torch.func hides the batch dimensions it adds from a measurement, so
    # the cost is declared: reverse mode makes about n_features + 1 times
    # what decoding makes (see LatentVariableModel.decoder_jacobian).
    cost = (est.n_features_in_ + 1) * fitted.floats_per_row(_decode, Z)

    def jacobians(module, z):
        return reduce(module.decoder_jacobian(z), z)

    return fitted.map_rows(jacobians, Z, floats_per_row=cost, check_finite=False)


def _latents(est, X, Z, function):
    """The latents at which to evaluate the decoder, mu(X) or Z itself, and
    the fitted module in their dtype."""
    _fitted_module(est, function)
    if (X is None) == (Z is None):
        raise ValueError(f"{function} needs exactly one of X (data) or Z (latents).")
    if X is not None:
        X = _check_X(est, X)
        fitted = FittedModule(est, X.dtype)
        return fitted.map_rows(_encode, X), fitted
    Z = _check_Z(est, Z)
    return Z, FittedModule(est, Z.dtype)


# -- decoder geometry ----------------------------------------------------------


@validate_params(
    {
        "est": "no_validation",
        "X": ["array-like", "sparse matrix", None],
        "Z": ["array-like", None],
    },
    prefer_skip_nested_validation=True,
)
def ima_contrast(est, X=None, *, Z=None):
    """IMA contrast of the decoder: how far its Jacobian's columns are from
    orthogonal.

    At a latent ``z`` with decoder Jacobian ``J = J_f(z)`` (columns
    ``J[:, k]``), the local contrast is

    ``c_IMA(f, z) = sum_k log ||J[:, k]|| - 1/2 log det(J^T J) >= 0``,

    zero exactly when the columns are orthogonal (Hadamard's inequality), the
    class of mixings that independent mechanism analysis (IMA) favours and
    that a VAE with a near-deterministic decoder is biased towards
    (Reizinger et al. 2022). The global contrast is the average of the local
    values over the points given (not the contrast of an averaged Jacobian).

    Parameters
    ----------
    est : fitted skvae estimator
        Any estimator whose ``module_`` has ``encode`` and ``decode``.
    X : array-like or sparse matrix of shape (n_samples, n_features_in_), \
            default=None
        Data; the contrast is taken at the codes ``est.transform(X)`` (the
        encoder's mean). Give either X or Z.
    Z : array-like of shape (n_samples, n_components), default=None
        Latents at which to take the contrast, e.g. draws from the prior.

    Returns
    -------
    result : :class:`~sklearn.utils.Bunch`
        With ``local_contrast`` (ndarray of shape (n_samples,); ``inf`` where
        the Jacobian has a zero column), ``global_contrast`` (float, their
        mean) and ``latents`` (ndarray of shape (n_samples, n_components),
        where the decoder was differentiated).

    References
    ----------
    .. [1] L. Gresele, J. von Kügelgen, V. Stimper, B. Schölkopf and M.
       Besserve, "Independent mechanism analysis, a new concept?",
       NeurIPS 2021.
    .. [2] P. Reizinger, L. Gresele, J. Brady, J. von Kügelgen, D. Zietlow, B.
       Schölkopf, G. Martius, W. Brendel and M. Besserve, "Embrace the Gap:
       VAEs Perform Independent Mechanism Analysis", NeurIPS 2022.

    Examples
    --------
    >>> from sklearn.datasets import load_iris
    >>> from skvae import VAETransformer
    >>> from skvae.diagnostics import ima_contrast
    >>> X = load_iris().data
    >>> vae = VAETransformer(2, encoder_layers=(16,), random_state=0).fit(X)
    >>> result = ima_contrast(vae, X)
    >>> result.local_contrast.shape, bool(result.global_contrast >= 0)
    ((150,), True)
    """
    latents, fitted = _latents(est, X, Z, "ima_contrast")

    def contrast(J, z):
        norms = torch.linalg.vector_norm(J, dim=1)
        # Normalising the columns first, c_IMA = -1/2 log det of their Gram
        # matrix = -sum log |R_kk| of their QR factor: no cancellation between
        # the two large terms of the definition.
        r_diag = torch.linalg.qr(J / norms.unsqueeze(1), mode="r").R.diagonal(
            dim1=-2, dim2=-1
        )
        local = -torch.log(r_diag.abs()).sum(-1)
        return (torch.where((norms > 0).all(-1), local, torch.inf),)

    (local,) = _map_jacobians(est, fitted, latents, contrast)
    return Bunch(
        local_contrast=local,
        global_contrast=float(np.mean(local)),
        latents=latents,
    )


@validate_params(
    {
        "est": "no_validation",
        "X": ["array-like", "sparse matrix", None],
        "Z": ["array-like", None],
    },
    prefer_skip_nested_validation=True,
)
def decoder_jacobian_spectrum(est, X=None, *, Z=None):
    """Singular values of the decoder's Jacobian: its invertibility margin.

    Pareek and Risteski show that a small encoder can approximate the
    posterior when the decoder mean is strongly invertible, with the smallest
    singular value of its Jacobian bounded away from zero; this measures that
    margin over the data.

    Parameters
    ----------
    est : fitted skvae estimator
        Any estimator whose ``module_`` has ``encode`` and ``decode``.
    X : array-like or sparse matrix of shape (n_samples, n_features_in_), \
            default=None
        Data; the Jacobian is taken at the codes ``est.transform(X)``. Give
        either X or Z.
    Z : array-like of shape (n_samples, n_components), default=None
        Latents at which to take the Jacobian.

    Returns
    -------
    result : :class:`~sklearn.utils.Bunch`
        With ``singular_values`` (ndarray of shape (n_samples, k),
        ``k = min(n_features_in_, n_components)``, in decreasing order),
        ``smallest`` and ``largest`` (ndarrays of shape (n_samples,)),
        ``condition_number`` (their ratio; ``inf`` where the smallest is 0)
        and ``latents``.

    References
    ----------
    .. [1] D. Pareek and A. Risteski, "The Effects of Invertibility on the
       Representational Complexity of Encoders in Variational Autoencoders".

    Examples
    --------
    >>> from sklearn.datasets import load_iris
    >>> from skvae import VAETransformer
    >>> from skvae.diagnostics import decoder_jacobian_spectrum
    >>> X = load_iris().data
    >>> vae = VAETransformer(2, encoder_layers=(16,), random_state=0).fit(X)
    >>> spectrum = decoder_jacobian_spectrum(vae, X)
    >>> spectrum.singular_values.shape, spectrum.condition_number.shape
    ((150, 2), (150,))
    """
    latents, fitted = _latents(est, X, Z, "decoder_jacobian_spectrum")

    def spectrum(J, z):
        return (torch.linalg.svdvals(J),)

    (values,) = _map_jacobians(est, fitted, latents, spectrum)
    smallest, largest = values[:, -1], values[:, 0]
    with np.errstate(divide="ignore", invalid="ignore"):
        condition = np.where(smallest > 0, largest / smallest, np.inf)
    return Bunch(
        singular_values=values,
        smallest=smallest,
        largest=largest,
        condition_number=condition,
        latents=latents,
    )


# -- encoder against decoder ---------------------------------------------------


def _gaussian_decoder(est, function):
    module = _fitted_module(est, function, gaussian_vae=True)
    if module.likelihood != "gaussian":
        raise ValueError(
            f"{function} needs a Gaussian decoder, but {type(est).__name__} has "
            f"likelihood={module.likelihood!r}."
        )
    return module


@validate_params(
    {
        "est": "no_validation",
        "X": ["array-like", "sparse matrix", None],
        "n_samples": _POSITIVE_INT,
        "random_state": ["random_state"],
    },
    prefer_skip_nested_validation=True,
)
def self_consistency(est, X=None, *, n_samples=1000, random_state=None):
    """How closely the encoder inverts the decoder, and its variances' optimality.

    In the near-deterministic regime (decoder variance ``gamma^-2 -> 0``) the
    optimal encoder mean inverts the decoder mean ``f`` (Reizinger et al.
    2022). This measures

    - on data: ``||x - f(mu(x))||^2``, and the encoder's variances against
      the optimal ones ``sigma_k^2(x) = 1 / (1 + gamma^2 ||J_f(mu(x))[:, k]||^2)``,
      the variances of the best factorised Gaussian posterior when ``f`` is
      linear near ``mu(x)``; with per-feature decoder variances ``v_i`` the
      norm is taken in the metric ``diag(1 / v)``;
    - on draws ``z`` from the prior: ``||z - mu(f(z))||^2``.

    Parameters
    ----------
    est : fitted skvae estimator
        An estimator whose ``module_`` is a :class:`~skvae.nn.GaussianVAE` with
        a Gaussian decoder.
    X : array-like or sparse matrix of shape (n_samples_X, n_features_in_), \
            default=None
        Data; None skips the measures on data.
    n_samples : int, default=1000
        Number of prior draws.
    random_state : int, RandomState instance or None, default=None
        Seed of the prior draws.

    Returns
    -------
    result : :class:`~sklearn.utils.Bunch`
        With

        - ``reconstruction_error``: ndarray of shape (n_samples_X,),
          ``||x - f(mu(x))||^2`` (None without X);
        - ``encoder_variance`` and ``optimal_variance``: ndarrays of shape
          (n_samples_X, n_components) (None without X; ``optimal_variance``
          is also None unless the prior is the standard normal, for which
          its formula holds);
        - ``latent_error``: ndarray of shape (n_samples,),
          ``||z - mu(f(z))||^2`` at the prior draws ``z``.

    Examples
    --------
    >>> from sklearn.datasets import load_iris
    >>> from skvae import VAETransformer
    >>> from skvae.diagnostics import self_consistency
    >>> X = load_iris().data
    >>> vae = VAETransformer(2, encoder_layers=(16,), random_state=0).fit(X)
    >>> result = self_consistency(vae, X, n_samples=50, random_state=0)
    >>> result.reconstruction_error.shape, result.latent_error.shape
    ((150,), (50,))
    >>> result.encoder_variance.shape == result.optimal_variance.shape
    True
    """
    module = _gaussian_decoder(est, "self_consistency")
    result = Bunch(
        reconstruction_error=None, encoder_variance=None, optimal_variance=None
    )
    if X is not None:
        X = _check_X(est, X)
        fitted = FittedModule(est, X.dtype)
        mean, log_var = fitted.map_rows(_posterior, X)

        def reconstruction_and_optimal_variance(J, z):
            # f(mu(x)) from the same chunk of latents the Jacobian is taken at.
            reconstruction, log_var = fitted.module.decoder_mean_and_log_var(z)
            precision = torch.exp(-log_var).expand_as(reconstruction).unsqueeze(-1)
            squared_norms = (J.square() * precision).sum(1)
            return reconstruction, 1.0 / (1.0 + squared_norms)

        reconstruction, optimal = _map_jacobians(
            est, fitted, mean, reconstruction_and_optimal_variance
        )
        result.reconstruction_error = np.sum((X - reconstruction) ** 2, axis=1)
        result.encoder_variance = np.exp(log_var)
        if module.prior.shape == 2.0:
            result.optimal_variance = optimal

    rng = check_random_state(random_state)
    if module.prior.shape == 2.0:
        Z = rng.standard_normal((n_samples, est.n_components))
    else:
        generator = _generator(int(rng.randint(_SEED_BOUND)))
        like = torch.empty(0, dtype=torch.float64)
        Z = module.prior.sample((n_samples, est.n_components), generator, like)
        Z = Z.numpy()
    Z_again = FittedModule(est, Z.dtype).map_rows(_encode_decoded, Z)
    result.latent_error = np.sum((Z - Z_again) ** 2, axis=1)
    return result


def _encode_decoded(module, z):
    return module.encode(module.decode(z))


def _generator(seed):
    # On the CPU whatever the device: see skvae.nn.gaussian.standard_normal.
    return torch.Generator().manual_seed(seed)


# -- inference gaps ------------------------------------------------------------


def _optimise_gaussian(module, x, mean0, log_var0, generator, options):
    """Per-row best Gaussian q*(z|x), by Adam on the ELBO from (mean0, log_var0).

    The mean is searched as ``mean0 + sigma0 * u``, so Adam's steps, whose
    size does not depend on the gradient's scale, are measured in units of
    the encoder's own posterior width: a near-deterministic decoder has
    posteriors far narrower than any fixed step. Each step draws fresh noise,
    shared by all rows (common random numbers), and Adam acts on each row's
    parameters alone, so a row's result does not depend on the other rows.

    Every ``window`` steps the loss is measured on one fixed set of draws, so
    that successive measurements differ by the progress made, not by noise.
    Adam with a constant step stalls where its noisy steps balance the pull
    of the optimum; so when a row's loss has not fallen by more than ``tol``
    since its best, the row returns to its best parameters with a smaller
    step, and it stops after ``_PLATEAUS`` such plateaus.
    """
    n_rows, n_components = mean0.shape
    scale0 = torch.exp(0.5 * log_var0)
    check_eps = [
        standard_normal((_SAMPLE_BLOCK, 1, n_components), generator, like=x)
        for _ in range(_CHECK_SAMPLES // _SAMPLE_BLOCK)
    ]

    def parameters(u, v):
        return mean0 + scale0 * u, (log_var0 + v).clamp(*ENCODER_LOG_VAR_RANGE)

    def loss(params, eps):
        mean, log_var = parameters(*params.chunk(2, dim=1))
        z = mean + torch.exp(0.5 * log_var) * eps
        return -module.log_likelihood(x, z).mean(0) + kl_to_standard_normal(
            mean, log_var
        )

    def check_loss(params):
        with torch.no_grad():
            return torch.stack([loss(params, eps) for eps in check_eps]).mean(0)

    # Adam written out, for a step size per row; (u, v) side by side.
    params = torch.zeros((n_rows, 2 * n_components), dtype=x.dtype, device=x.device)
    first, second = torch.zeros_like(params), torch.zeros_like(params)
    step_size = torch.full(
        (n_rows, 1), options["learning_rate"], dtype=x.dtype, device=x.device
    )
    best = check_loss(params)
    best_params = params.clone()
    plateaus = torch.zeros(n_rows, dtype=torch.int64, device=x.device)
    n_iter = torch.full((n_rows,), options["max_iter"], device=x.device)
    beta1, beta2 = 0.9, 0.999
    for step in range(1, options["max_iter"] + 1):
        eps = standard_normal(
            (options["n_mc_samples"], 1, n_components), generator, like=x
        )
        params.requires_grad_(True)
        # Gradients only for the variational parameters: the fitted weights
        # must stay untouched.
        (grad,) = torch.autograd.grad(loss(params, eps).sum(), params)
        params = params.detach()
        first.lerp_(grad, 1 - beta1)
        second.lerp_(grad.square(), 1 - beta2)
        corrected = first / (1 - beta1**step)
        params -= step_size * corrected / ((second / (1 - beta2**step)).sqrt() + 1e-8)
        if step % options["window"] == 0:
            current = check_loss(params)
            active = plateaus < _PLATEAUS
            improved = active & (current < best - options["tol"])
            best_params[improved] = params[improved]
            best = torch.where(improved, current, best)
            stalled = active & ~improved
            params[stalled] = best_params[stalled]
            step_size[stalled] *= _STEP_DECAY
            plateaus += stalled
            n_iter[active & (plateaus == _PLATEAUS)] = step
            if (plateaus == _PLATEAUS).all():
                break
    with torch.no_grad():
        mean, log_var = parameters(*best_params.chunk(2, dim=1))
    return mean, log_var, n_iter


def _elbos(module, x, posteriors, generator, n_samples):
    """ELBO of each Gaussian in ``posteriors`` with the same draws (common
    random numbers), and the standard error of the first differences.

    Returns the ELBOs (one tensor per posterior) and the Monte Carlo standard
    error of ``ELBO[posteriors[1]] - ELBO[posteriors[0]]``.
    """
    n_components = posteriors[0][0].shape[1]
    sums = [torch.zeros(len(x), dtype=x.dtype, device=x.device) for _ in posteriors]
    diff_sum = torch.zeros_like(sums[0])
    diff_sq = torch.zeros_like(sums[0])
    for start in range(0, n_samples, _SAMPLE_BLOCK):
        size = min(_SAMPLE_BLOCK, n_samples - start)
        eps = standard_normal((size, 1, n_components), generator, like=x)
        log_liks = [
            module.log_likelihood(x, mean + torch.exp(0.5 * log_var) * eps)
            for mean, log_var in posteriors
        ]
        for total, log_lik in zip(sums, log_liks, strict=True):
            total += log_lik.sum(0)
        diff = log_liks[1] - log_liks[0]
        diff_sum += diff.sum(0)
        diff_sq += diff.square().sum(0)
    elbos = [
        total / n_samples - kl_to_standard_normal(mean, log_var)
        for total, (mean, log_var) in zip(sums, posteriors, strict=True)
    ]
    diff_var = (diff_sq / n_samples - (diff_sum / n_samples).square()).clamp(min=0)
    return elbos, torch.sqrt(diff_var / n_samples)


@validate_params(
    {
        "est": "no_validation",
        "X": ["array-like", "sparse matrix"],
        "n_mc_samples": _POSITIVE_INT,
        "learning_rate": [Interval(Real, 0, None, closed="neither")],
        "max_iter": _POSITIVE_INT,
        "window": _POSITIVE_INT,
        "tol": [Interval(Real, 0, None, closed="left")],
        "n_elbo_samples": _POSITIVE_INT,
        "n_importance_samples": _POSITIVE_INT,
        "random_state": ["random_state"],
    },
    prefer_skip_nested_validation=True,
)
def amortization_gap(
    est,
    X,
    *,
    n_mc_samples=50,
    learning_rate=3e-2,
    max_iter=2000,
    window=50,
    tol=0.0,
    n_elbo_samples=1000,
    n_importance_samples=5000,
    random_state=None,
):
    """Split the encoder's inference gap into amortization and approximation.

    Following Cremer, Li and Duvenaud (2018), for each row

    ``log p(x) - ELBO[q] = (log p(x) - ELBO[q*]) + (ELBO[q*] - ELBO[q])``,

    the approximation gap plus the amortization gap, where ``q`` is the
    encoder's Gaussian and ``q*`` the best Gaussian with diagonal covariance
    for that row alone. ``q*`` is found by Adam on the row's mean and
    log-variance, started from the encoder's output, with ``n_mc_samples``
    fresh draws a step; every ``window`` steps the loss is measured on one
    fixed set of draws, and a row stops, keeping its best parameters, when
    that loss stops improving. A large amortization gap says the encoder is too
    small or under-trained; a large approximation gap says no diagonal
    Gaussian fits the posterior.

    Parameters
    ----------
    est : fitted skvae estimator
        An estimator whose ``module_`` is a :class:`~skvae.nn.GaussianVAE`.
    X : array-like or sparse matrix of shape (n_samples, n_features_in_)
        Data.
    n_mc_samples : int, default=50
        Monte Carlo draws per optimisation step.
    learning_rate : float, default=3e-2
        Adam's step size. The mean moves in units of the encoder's posterior
        standard deviation, the log-variance in nats.
    max_iter : int, default=2000
        Maximum number of optimisation steps per row.
    window : int, default=50
        Steps between two checks of the stopping rule.
    tol : float, default=0.0
        Smallest decrease of the loss (nats) between checks counted as
        improvement.
    n_elbo_samples : int, default=1000
        Draws for the final estimates of ELBO[q] and ELBO[q*]; the same
        draws serve both, so their difference has little noise.
    n_importance_samples : int, default=5000
        Importance samples K of the IWAE estimate of log p(x), drawn from
        ``q*`` (a tighter bound than from ``q`` when the encoder is poor).
    random_state : int, RandomState instance or None, default=None
        Seed of every draw. Draws are shared by all rows (common random
        numbers), so each row's results depend on that row alone.

    Returns
    -------
    result : :class:`~sklearn.utils.Bunch`
        With ndarrays of shape (n_samples,):

        - ``elbo``: ELBO[q] of the encoder's Gaussian;
        - ``elbo_optimized``: ELBO[q*];
        - ``log_likelihood``: IWAE estimate of log p(x);
        - ``amortization_gap``: ``elbo_optimized - elbo``;
        - ``amortization_gap_stderr``: its Monte Carlo standard error;
        - ``approximation_gap``: ``log_likelihood - elbo_optimized``;
        - ``n_iter``: optimisation steps taken;

        and ``mean_optimized``, ``log_var_optimized`` (ndarrays of shape
        (n_samples, n_components)), the parameters of ``q*``.

    References
    ----------
    .. [1] C. Cremer, X. Li and D. Duvenaud, "Inference Suboptimality in
       Variational Autoencoders", ICML 2018.

    Examples
    --------
    >>> import numpy as np
    >>> from sklearn.datasets import load_iris
    >>> from skvae import VAETransformer
    >>> from skvae.diagnostics import amortization_gap
    >>> X = load_iris().data
    >>> vae = VAETransformer(2, encoder_layers=(16,), random_state=0).fit(X)
    >>> gaps = amortization_gap(vae, X[:5], n_importance_samples=500,
    ...                         random_state=0)
    >>> gaps.amortization_gap.shape
    (5,)
    >>> bool(np.all(gaps.amortization_gap > -3 * gaps.amortization_gap_stderr))
    True
    """
    module = _fitted_module(est, "amortization_gap", gaussian_vae=True)
    if module.prior.shape != 2.0:
        raise ValueError(
            "amortization_gap computes the ELBO with the closed-form KL term of "
            f"the standard normal prior, but {type(est).__name__} has "
            f"prior_shape={module.prior.shape:g}."
        )
    X = _check_X(est, X)
    fitted = FittedModule(est, X.dtype)
    options = dict(
        n_mc_samples=n_mc_samples,
        learning_rate=learning_rate,
        max_iter=max_iter,
        window=window,
        tol=tol,
    )
    rng = check_random_state(random_state)
    seeds = [int(seed) for seed in rng.randint(_SEED_BOUND, size=3)]
    # Draws are taken _SAMPLE_BLOCK at a time, or n_mc_samples per step, for
    # two posteriors at once or with their gradients: twice the cost of one
    # block of importance weights.
    block = max(n_mc_samples, _SAMPLE_BLOCK)
    cost = 2 * fitted.floats_per_row(
        lambda module, x: module.importance_log_weights(x, _generator(0), block), X
    )

    def gaps(module, x):
        encoder_q = module.posterior(x)
        # Every chunk re-seeds its generators, so rows in different chunks
        # see the same draws and a row's results depend on that row alone.
        with torch.enable_grad():
            *best_q, n_iter = _optimise_gaussian(
                module, x, *encoder_q, _generator(seeds[0]), options
            )
        (elbo, elbo_best), stderr = _elbos(
            module, x, [encoder_q, best_q], _generator(seeds[1]), n_elbo_samples
        )
        log_p = module.log_prob(
            x,
            _generator(seeds[2]),
            n_importance_samples,
            samples_per_pass=_SAMPLE_BLOCK,
            proposal=best_q,
        )
        return elbo, elbo_best, log_p, stderr, *best_q, n_iter

    elbo, elbo_best, log_p, stderr, mean, log_var, n_iter = fitted.map_rows(
        gaps, X, floats_per_row=cost, check_finite=False
    )
    return Bunch(
        elbo=elbo,
        elbo_optimized=elbo_best,
        log_likelihood=log_p,
        amortization_gap=elbo_best - elbo,
        amortization_gap_stderr=stderr,
        approximation_gap=log_p - elbo_best,
        n_iter=n_iter.astype(np.int64),
        mean_optimized=mean,
        log_var_optimized=log_var,
    )


# -- latent recovery -----------------------------------------------------------


@validate_params(
    {"S": ["array-like"], "Z": ["array-like"]}, prefer_skip_nested_validation=True
)
def mean_correlation_coefficient(S, Z):
    """Mean correlation coefficient (MCC) between true sources and latents.

    The Pearson correlations between every source and every latent are
    computed, sources and latents are paired to maximise the total absolute
    correlation (Hungarian algorithm, :func:`scipy.optimize.linear_sum_assignment`),
    and the MCC is the mean absolute correlation over the pairs. It is 1 when
    the latents are the sources up to permutation, sign, scale and offset.

    Parameters
    ----------
    S : array-like of shape (n_samples, n_sources)
        True sources.
    Z : array-like of shape (n_samples, n_latents)
        Recovered latents, e.g. ``est.transform(X)``. With a different number
        of columns than ``S``, ``min(n_sources, n_latents)`` pairs are made.

    Returns
    -------
    result : :class:`~sklearn.utils.Bunch`
        With ``score`` (float, the MCC in [0, 1]), ``matching`` (ndarray of
        shape (n_pairs, 2): column of S, column of Z of each pair) and
        ``correlation`` (ndarray of shape (n_sources, n_latents), the Pearson
        correlations).

    Examples
    --------
    >>> import numpy as np
    >>> from skvae.diagnostics import mean_correlation_coefficient
    >>> S = np.random.default_rng(0).uniform(size=(200, 3))
    >>> result = mean_correlation_coefficient(S, -2 * S[:, [2, 0, 1]] + 1)
    >>> round(result.score, 6), result.matching.tolist()
    (1.0, [[0, 1], [1, 2], [2, 0]])
    """
    S = check_array(S, dtype=FLOAT_DTYPES, ensure_min_samples=2, input_name="S")
    Z = check_array(Z, dtype=FLOAT_DTYPES, ensure_min_samples=2, input_name="Z")
    if len(S) != len(Z):
        raise ValueError(
            f"S and Z must have the same number of rows, got {len(S)} and {len(Z)}."
        )
    for name, A in (("S", S), ("Z", Z)):
        constant = np.flatnonzero(np.ptp(A, axis=0) == 0)
        if constant.size:
            raise ValueError(
                f"Column {constant[0]} of {name} is constant: its correlation with "
                "anything is undefined."
            )
    correlation = np.corrcoef(S, Z, rowvar=False)[: S.shape[1], S.shape[1] :]
    rows, cols = linear_sum_assignment(-np.abs(correlation))
    return Bunch(
        score=float(np.abs(correlation[rows, cols]).mean()),
        matching=np.column_stack([rows, cols]),
        correlation=correlation,
    )


# -- entropy -------------------------------------------------------------------


@validate_params(
    {
        "X": ["array-like"],
        "n_neighbors": _POSITIVE_INT,
    },
    prefer_skip_nested_validation=True,
)
def knn_entropy(X, n_neighbors=3):
    """Kozachenko-Leonenko estimate of the differential entropy of X's rows.

    ``H = psi(n) - psi(k) + log V_d + (d / n) sum_i log r_i``, with ``r_i``
    the distance from row i to its k-th nearest neighbour and ``V_d`` the
    volume of the unit ball in d dimensions.
    :meth:`~skvae.INNAutoencoder.information_profile` estimates the entropy
    of the data and of the code with it.

    Parameters
    ----------
    X : array-like of shape (n_samples, n_features)
        Samples of a continuous distribution: more than ``n_neighbors``
        rows, none repeated.
    n_neighbors : int, default=3
        The k of the estimator.

    Returns
    -------
    entropy : float
        Estimated entropy in nats.

    References
    ----------
    .. [1] L. F. Kozachenko and N. N. Leonenko, "Sample Estimate of the
       Entropy of a Random Vector", Problems of Information Transmission,
       1987.

    Examples
    --------
    >>> import numpy as np
    >>> from skvae.diagnostics import knn_entropy
    >>> X = np.random.default_rng(0).normal(size=(2000, 2))
    >>> exact = np.log(2 * np.pi * np.e)  # of N(0, I) in two dimensions
    >>> bool(abs(knn_entropy(X) - exact) < 0.1)
    True
    """
    X = check_array(X, dtype=FLOAT_DTYPES)
    n_samples, n_features = X.shape
    if n_samples <= n_neighbors:
        raise ValueError(
            f"The entropy estimate needs more than n_neighbors={n_neighbors} "
            f"rows, got {n_samples}."
        )
    # kneighbors() without X leaves each row out of its own neighbours.
    distances, _ = NearestNeighbors(n_neighbors=n_neighbors).fit(X).kneighbors()
    if np.any(distances[:, 0] == 0):
        raise ValueError(
            "X has repeated rows, which have no continuous density: "
            "dequantize discrete data (add uniform noise) before estimating "
            "entropies."
        )
    log_unit_ball = n_features / 2 * np.log(np.pi) - gammaln(n_features / 2 + 1)
    return float(
        digamma(n_samples)
        - digamma(n_neighbors)
        + log_unit_ball
        + n_features * np.mean(np.log(distances[:, -1]))
    )
