"""Synthetic data with known latents or a known density, and dequantized digits.

The generators follow scikit-learn's ``make_*`` conventions: ``n_samples``
first, ``random_state`` for every random draw, float64 arrays returned as a
tuple. Each map or density is drawn from ``random_state`` before the samples
are, so it does not depend on ``n_samples`` (apart from the centring in
:func:`make_mobius`).
"""

from functools import partial
from numbers import Integral, Real

import numpy as np
from scipy.linalg import cholesky, solve_triangular
from scipy.special import logsumexp
from sklearn.datasets import load_digits
from sklearn.utils import Bunch, check_random_state
from sklearn.utils._param_validation import Interval, validate_params
from sklearn.utils.validation import check_array

__all__ = [
    "KnownDensity",
    "load_digits_dequantized",
    "make_known_density",
    "make_latent_gaussian",
    "make_mlp_mixing",
    "make_mobius",
]

_POSITIVE = [Interval(Integral, 1, None, closed="left")]

# Slope of the smooth leaky ReLU for negative inputs, and the sharpness of its
# bend: the bend sits at the scale of the pre-activations, so the mixing is
# clearly non-linear, and the slopes stay within a factor 5 of each other, so
# it stays well conditioned.
_LEAK = 0.2
_SHARPNESS = 5.0


def _haar_orthogonal(n, rng):
    """Draw an n x n orthogonal matrix from the Haar measure.

    The sign correction makes the QR factor Haar distributed (Mezzadri 2007).
    """
    q, r = np.linalg.qr(rng.standard_normal((n, n)))
    return q * np.sign(np.diag(r))


def _mobius(S, rotation, pole, offset):
    diff = np.asarray(S, dtype=np.float64) - pole
    return diff @ rotation.T / np.sum(diff**2, axis=1, keepdims=True) - offset


@validate_params(
    {
        "n_samples": _POSITIVE,
        "n_features": _POSITIVE,
        "random_state": ["random_state"],
        "return_map": ["boolean"],
    },
    prefer_skip_nested_validation=True,
)
def make_mobius(n_samples=1000, n_features=3, *, random_state=None, return_map=False):
    """Mix uniform sources with a Möbius transformation, a conformal map.

    Sources ``S ~ U[-0.5, 0.5]^d`` are mapped by
    ``f(s) = A (s - a) / ||s - a||^2`` with ``A`` a random (Haar) orthogonal
    matrix and ``a_i ~ N(0, 1)`` redrawn until ``|a_i| > 0.5``, so the pole lies
    outside the cube of sources. The observations are then centred.

    The Jacobian of ``f`` is a scaled orthogonal matrix at every point, so its
    columns are orthogonal and the IMA contrast ``c_IMA(f, s)`` is exactly 0
    (Reizinger et al.): the ground truth that a VAE with a near-deterministic
    decoder can identify.

    Parameters
    ----------
    n_samples : int, default=1000
        Number of samples.
    n_features : int, default=3
        Number of sources, which is also the number of observed features.
    random_state : int, RandomState instance or None, default=None
        Seed for the map and the sources.
    return_map : bool, default=False
        If True, also return the mixing as a callable.

    Returns
    -------
    X : ndarray of shape (n_samples, n_features)
        Centred observations.
    S : ndarray of shape (n_samples, n_features)
        The true sources.
    mixing : callable
        Returned only if ``return_map`` is True. ``mixing(S)`` maps an array of
        sources of shape (m, n_features) to observations, including the
        centring, so ``mixing(S)`` equals ``X``.

    Examples
    --------
    >>> from skvae.datasets import make_mobius
    >>> X, S = make_mobius(n_samples=5, random_state=0)
    >>> X.shape, S.shape
    ((5, 3), (5, 3))
    """
    rng = check_random_state(random_state)
    rotation = _haar_orthogonal(n_features, rng)
    pole = rng.standard_normal(n_features)
    near = np.abs(pole) <= 0.5
    while near.any():
        pole[near] = rng.standard_normal(near.sum())
        near = np.abs(pole) <= 0.5
    S = rng.uniform(-0.5, 0.5, size=(n_samples, n_features))
    uncentred = _mobius(S, rotation, pole, offset=0.0)
    mixing = partial(_mobius, rotation=rotation, pole=pole, offset=uncentred.mean(0))
    X = mixing(S)
    return (X, S, mixing) if return_map else (X, S)


def _smooth_leaky_relu(t):
    return _LEAK * t + (1 - _LEAK) * np.logaddexp(0, _SHARPNESS * t) / _SHARPNESS


def _mlp(S, weights, biases, rotation, signed_permutation):
    H = np.asarray(S, dtype=np.float64) @ signed_permutation.T
    for weight, bias in zip(weights[:-1], biases, strict=True):
        H = _smooth_leaky_relu(H @ weight.T + bias)
    return H @ weights[-1].T @ rotation.T


@validate_params(
    {
        "n_samples": _POSITIVE,
        "n_features": [Interval(Integral, 2, None, closed="left")],
        "n_layers": _POSITIVE,
        "random_state": ["random_state"],
        "return_map": ["boolean"],
    },
    prefer_skip_nested_validation=True,
)
def make_mlp_mixing(
    n_samples=1000, n_features=3, *, n_layers=2, random_state=None, return_map=False
):
    """Mix uniform sources with an invertible MLP whose Jacobian is not orthogonal.

    Sources ``S ~ U[-0.5, 0.5]^d`` go through ``f = Q ∘ T ∘ P``: ``P`` a random
    signed permutation, ``T`` an MLP of ``n_layers`` square lower-triangular
    linear layers with a smooth leaky ReLU (an increasing, smooth bijection of
    R) between consecutive layers, and ``Q`` a random (Haar) orthogonal matrix.
    The triangular weights have diagonals in [1.5, 3] and positive entries
    below the diagonal of size about ``1.5 / sqrt(d)``, so each layer is well
    conditioned (condition number below about 4 for ``d <= 10``).

    The Jacobian of ``T`` is then lower triangular with positive entries on and
    below the diagonal at every point, so no two of its columns are orthogonal;
    ``P`` and ``Q`` do not change that. Hence the IMA contrast ``c_IMA(f, s)``
    is strictly positive at every point, unlike :func:`make_mobius`. With
    ``n_layers=1`` the mixing is linear.

    Parameters
    ----------
    n_samples : int, default=1000
        Number of samples.
    n_features : int, default=3
        Number of sources, which is also the number of observed features. At
        least 2: a single column is always orthogonal.
    n_layers : int, default=2
        Number of linear layers; ``n_layers - 1`` non-linearities sit between
        them.
    random_state : int, RandomState instance or None, default=None
        Seed for the map and the sources.
    return_map : bool, default=False
        If True, also return the mixing as a callable.

    Returns
    -------
    X : ndarray of shape (n_samples, n_features)
        Observations, not centred.
    S : ndarray of shape (n_samples, n_features)
        The true sources.
    mixing : callable
        Returned only if ``return_map`` is True. ``mixing(S)`` maps an array of
        sources of shape (m, n_features) to observations, so ``mixing(S)``
        equals ``X``.

    Examples
    --------
    >>> from skvae.datasets import make_mlp_mixing
    >>> X, S = make_mlp_mixing(n_samples=5, n_features=2, random_state=0)
    >>> X.shape, S.shape
    ((5, 2), (5, 2))
    """
    rng = check_random_state(random_state)
    d = n_features
    signed_permutation = np.eye(d)[rng.permutation(d)] * rng.choice([-1.0, 1.0], d)
    weights = [
        np.diag(rng.uniform(1.5, 3.0, d))
        + np.tril(rng.uniform(1.0, 2.0, (d, d)), k=-1) / np.sqrt(d)
        for _ in range(n_layers)
    ]
    biases = [rng.uniform(-0.5, 0.5, d) for _ in range(n_layers - 1)]
    rotation = _haar_orthogonal(d, rng)
    mixing = partial(
        _mlp,
        weights=weights,
        biases=biases,
        rotation=rotation,
        signed_permutation=signed_permutation,
    )
    S = rng.uniform(-0.5, 0.5, size=(n_samples, d))
    X = mixing(S)
    return (X, S, mixing) if return_map else (X, S)


def _latent_mean(Z, rotation, gains, embedding, frequencies, phases, fold):
    Z = np.asarray(Z, dtype=np.float64)
    if fold:
        Z = Z.copy()
        Z[:, 0] = (Z[:, 0] ** 2 - 1) / np.sqrt(2)
    T = Z @ rotation.T
    n_components = rotation.shape[0]
    warped = T + gains * np.tanh(T)
    curved = np.sin(Z @ frequencies.T + phases)
    return (
        warped @ embedding[:, :n_components].T + curved @ embedding[:, n_components:].T
    )


@validate_params(
    {
        "n_samples": _POSITIVE,
        "n_components": _POSITIVE,
        "n_features": _POSITIVE,
        "invertible": ["boolean"],
        "noise": [Interval(Real, 0, None, closed="left")],
        "random_state": ["random_state"],
        "return_map": ["boolean"],
    },
    prefer_skip_nested_validation=True,
)
def make_latent_gaussian(
    n_samples=1000,
    n_components=2,
    n_features=10,
    *,
    invertible=True,
    noise=0.05,
    random_state=None,
    return_map=False,
):
    """Sample Pareek and Risteski's model ``z ~ N(0, I)``, ``x = G(z) + noise * e``.

    With ``invertible=True``, ``G`` is strongly invertible:
    ``G(z) = U w(z) + V sin(C z + c)``. Here ``[U V]`` is a random (Haar)
    orthogonal matrix split after ``n_components`` columns,
    ``w(z) = t + g * tanh(t)`` with ``t = P z``, ``P`` random orthogonal and the
    gains ``g_k`` drawn from U[-0.5, 0.5], and ``C``, ``c`` are random. Since
    ``U`` and ``V`` span orthogonal subspaces,
    ``||G(z) - G(z')|| >= ||w(z) - w(z')|| >= 0.5 ||z - z'||``: ``G`` is
    injective, and the smallest singular value of its Jacobian is at least
    ``1 - max |g_k| >= 0.5`` everywhere. The sine term curves the manifold
    (when ``n_features > n_components``).

    With ``invertible=False``, ``G`` folds the latent space first: it is the
    map above applied to ``((z_1^2 - 1) / sqrt(2), z_2, ..., z_n)``, so ``z``
    and its reflection ``(-z_1, z_2, ..., z_n)`` have the same mean, and the
    Jacobian is singular on ``z_1 = 0``. For ``x`` away from the fold the
    posterior ``p(z | x)`` then has two modes, ``z`` and its reflection, which
    a Gaussian encoder cannot represent.

    Parameters
    ----------
    n_samples : int, default=1000
        Number of samples.
    n_components : int, default=2
        Dimension ``n`` of the latent space.
    n_features : int, default=10
        Dimension ``M`` of the observations; at least ``n_components``.
    invertible : bool, default=True
        Whether ``G`` is strongly invertible (True) or folding (False).
    noise : float, default=0.05
        Standard deviation of the isotropic Gaussian noise added to ``G(z)``.
    random_state : int, RandomState instance or None, default=None
        Seed for the map, the latents and the noise.
    return_map : bool, default=False
        If True, also return the noise-free map ``G`` as a callable.

    Returns
    -------
    X : ndarray of shape (n_samples, n_features)
        Observations.
    Z : ndarray of shape (n_samples, n_components)
        The latents.
    generator : callable
        Returned only if ``return_map`` is True. ``generator(Z)`` maps latents
        of shape (m, n_components) to the noise-free means ``G(Z)``.

    Examples
    --------
    >>> from skvae.datasets import make_latent_gaussian
    >>> X, Z = make_latent_gaussian(n_samples=5, random_state=0)
    >>> X.shape, Z.shape
    ((5, 10), (5, 2))
    """
    if n_features < n_components:
        raise ValueError(
            f"n_features={n_features} must be at least n_components="
            f"{n_components}: G embeds the latent space in the feature space."
        )
    rng = check_random_state(random_state)
    generator = partial(
        _latent_mean,
        rotation=_haar_orthogonal(n_components, rng),
        gains=rng.uniform(-0.5, 0.5, n_components),
        embedding=_haar_orthogonal(n_features, rng),
        frequencies=rng.standard_normal((n_features - n_components, n_components))
        / np.sqrt(n_components),
        phases=rng.uniform(0, 2 * np.pi, n_features - n_components),
        fold=not invertible,
    )
    Z = rng.standard_normal((n_samples, n_components))
    X = generator(Z) + noise * rng.standard_normal((n_samples, n_features))
    return (X, Z, generator) if return_map else (X, Z)


class KnownDensity:
    """A Gaussian mixture pushed through a smooth bijection with a closed-form inverse.

    ``x = R phi(y)`` with ``y`` drawn from the mixture
    ``sum_c w_c N(mu_c, Sigma_c)``, ``R`` orthogonal and ``phi`` the elementwise
    sinh-arcsinh map ``phi_k(t) = sinh(delta_k * arcsinh(t) - epsilon_k)``
    (Jones and Pewsey 2009), which bends the tails (``delta_k``) and skews
    (``epsilon_k``). Its inverse and log-Jacobian are analytic, so
    ``log p(x) = log p_mix(phi^-1(R^T x)) + log |det J_{phi^-1}(R^T x)|`` is
    exact.

    Built by :func:`make_known_density` with random parameters; build it by
    hand only with valid ones (positive weights summing to 1, positive
    definite covariances, positive ``tail_weight``).

    Parameters
    ----------
    weights : array-like of shape (n_centers,)
        Mixture weights.
    means : array-like of shape (n_centers, n_features)
        Component means.
    covariances : array-like of shape (n_centers, n_features, n_features)
        Component covariance matrices.
    rotation : array-like of shape (n_features, n_features)
        The orthogonal matrix ``R``.
    tail_weight : array-like of shape (n_features,)
        ``delta_k``; above 1 makes tails heavier, below 1 lighter.
    skewness : array-like of shape (n_features,)
        ``epsilon_k``.

    Attributes
    ----------
    n_features : int
        Dimension of the space the density lives in.

    Examples
    --------
    >>> import numpy as np
    >>> from skvae.datasets import KnownDensity
    >>> density = KnownDensity([1.0], [[0.0]], [[[1.0]]], [[1.0]], [1.0], [0.0])
    >>> density.score_samples(np.zeros((1, 1))).round(4)
    array([-0.9189])
    """

    def __init__(self, weights, means, covariances, rotation, tail_weight, skewness):
        self.weights = np.asarray(weights, dtype=np.float64)
        self.means = np.asarray(means, dtype=np.float64)
        self.covariances = np.asarray(covariances, dtype=np.float64)
        self.rotation = np.asarray(rotation, dtype=np.float64)
        self.tail_weight = np.asarray(tail_weight, dtype=np.float64)
        self.skewness = np.asarray(skewness, dtype=np.float64)
        self.n_features = self.means.shape[1]
        self._cholesky = np.array([cholesky(c, lower=True) for c in self.covariances])

    def __repr__(self):
        return (
            f"KnownDensity(n_features={self.n_features}, n_centers={len(self.weights)})"
        )

    def sample(self, n_samples=1, random_state=None):
        """Draw samples.

        Parameters
        ----------
        n_samples : int, default=1
            Number of samples.
        random_state : int, RandomState instance or None, default=None
            Seed for the draws.

        Returns
        -------
        X : ndarray of shape (n_samples, n_features)
            The samples (without component labels, unlike
            :meth:`sklearn.mixture.GaussianMixture.sample`).
        """
        rng = check_random_state(random_state)
        labels = rng.choice(len(self.weights), size=n_samples, p=self.weights)
        noise = rng.standard_normal((n_samples, self.n_features))
        Y = self.means[labels] + np.einsum("nij,nj->ni", self._cholesky[labels], noise)
        warped = np.sinh(self.tail_weight * np.arcsinh(Y) - self.skewness)
        return warped @ self.rotation.T

    def score_samples(self, X):
        """Exact log-density of each row, in nats.

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features)
            Points to evaluate.

        Returns
        -------
        log_density : ndarray of shape (n_samples,)
            ``log p(x)`` for each row.
        """
        X = check_array(X, dtype=np.float64)
        if X.shape[1] != self.n_features:
            raise ValueError(
                f"X has {X.shape[1]} features, but the density is over "
                f"{self.n_features}."
            )
        U = X @ self.rotation
        A = (np.arcsinh(U) + self.skewness) / self.tail_weight
        Y = np.sinh(A)
        # d/du sinh((arcsinh(u) + eps) / delta) = cosh(a) / (delta sqrt(1 + u^2));
        # logaddexp and hypot keep both terms finite for large |u|.
        log_det = np.sum(
            np.logaddexp(A, -A)
            - np.log(2 * self.tail_weight)
            - np.log(np.hypot(1.0, U)),
            axis=1,
        )
        component_log_pdfs = []
        for mean, chol in zip(self.means, self._cholesky, strict=True):
            whitened = solve_triangular(chol, (Y - mean).T, lower=True)
            component_log_pdfs.append(
                -0.5 * np.sum(whitened**2, axis=0)
                - np.sum(np.log(np.diag(chol)))
                - 0.5 * self.n_features * np.log(2 * np.pi)
            )
        log_mix = logsumexp(
            np.array(component_log_pdfs), axis=0, b=self.weights[:, None]
        )
        return log_mix + log_det


@validate_params(
    {
        "n_samples": _POSITIVE,
        "n_features": _POSITIVE,
        "n_centers": _POSITIVE,
        "random_state": ["random_state"],
        "return_density": ["boolean"],
    },
    prefer_skip_nested_validation=True,
)
def make_known_density(
    n_samples=1000,
    n_features=2,
    *,
    n_centers=3,
    random_state=None,
    return_density=False,
):
    """Sample a non-Gaussian density whose log-density is known exactly.

    A mixture of ``n_centers`` Gaussians (weights near uniform, means with
    standard deviation 1.5, component scales in [0.3, 0.7] along random axes)
    is pushed through a smooth bijection with an analytic inverse: see
    :class:`KnownDensity`. The tail weights are drawn from U[0.7, 1.3] and the
    skewnesses from U[-0.5, 0.5]. Use it as a reference for ``score_samples``
    of density models.

    Parameters
    ----------
    n_samples : int, default=1000
        Number of samples.
    n_features : int, default=2
        Dimension of the data.
    n_centers : int, default=3
        Number of mixture components.
    random_state : int, RandomState instance or None, default=None
        Seed for the density and the samples.
    return_density : bool, default=False
        If True, also return the density, to evaluate it anywhere or draw more
        samples from it.

    Returns
    -------
    X : ndarray of shape (n_samples, n_features)
        Samples.
    log_p : ndarray of shape (n_samples,)
        Exact log-density of each sample, in nats.
    density : KnownDensity
        Returned only if ``return_density`` is True; ``density.score_samples``
        gives the log-density of any array of points.

    Examples
    --------
    >>> from skvae.datasets import make_known_density
    >>> X, log_p, density = make_known_density(
    ...     n_samples=5, random_state=0, return_density=True
    ... )
    >>> X.shape, log_p.shape
    ((5, 2), (5,))
    >>> bool(abs(density.score_samples(X) - log_p).max() < 1e-12)
    True
    """
    rng = check_random_state(random_state)
    weights = rng.dirichlet(np.full(n_centers, 5.0))
    means = 1.5 * rng.standard_normal((n_centers, n_features))
    covariances = []
    for _ in range(n_centers):
        axes = _haar_orthogonal(n_features, rng)
        scales = rng.uniform(0.3, 0.7, n_features)
        covariances.append((axes * scales**2) @ axes.T)
    density = KnownDensity(
        weights=weights,
        means=means,
        covariances=covariances,
        rotation=_haar_orthogonal(n_features, rng),
        tail_weight=rng.uniform(0.7, 1.3, n_features),
        skewness=rng.uniform(-0.5, 0.5, n_features),
    )
    X = density.sample(n_samples, random_state=rng)
    log_p = density.score_samples(X)
    return (X, log_p, density) if return_density else (X, log_p)


@validate_params(
    {"return_X_y": ["boolean"], "random_state": ["random_state"]},
    prefer_skip_nested_validation=True,
)
def load_digits_dequantized(*, return_X_y=False, random_state=0):
    """Load scikit-learn's 8x8 digits, dequantized to a continuous density.

    The pixel counts 0..16 of :func:`sklearn.datasets.load_digits` get uniform
    noise and are scaled: ``(counts + U[0, 1)) / 17``, in [0, 1). Discrete data
    has no density, so continuous log-likelihoods are compared on this version
    (Theis et al. 2016). This is skvae's benchmark data set.

    Log-likelihoods are in nats of the scaled data. Subtracting
    ``64 * log(17)`` (about 181.3) gives the log-density of the dequantized
    counts, whose expectation over the noise is a lower bound on the
    log-probability of the discrete image.

    Parameters
    ----------
    return_X_y : bool, default=False
        If True, return ``(data, target)`` instead of a Bunch.
    random_state : int, RandomState instance or None, default=0
        Seed for the dequantization noise; fixed by default so benchmarks
        see the same data.

    Returns
    -------
    data : :class:`~sklearn.utils.Bunch`
        With ``data`` (ndarray of shape (1797, 64), values in [0, 1)),
        ``images`` (the same values, shape (1797, 8, 8)), ``target`` (the
        digit, 0..9), ``feature_names``, ``target_names`` and ``DESCR``.
    (data, target) : tuple of ndarray
        If ``return_X_y`` is True: shapes (1797, 64) and (1797,).

    Examples
    --------
    >>> from skvae.datasets import load_digits_dequantized
    >>> X, y = load_digits_dequantized(return_X_y=True)
    >>> X.shape, bool(X.min() >= 0), bool(X.max() < 1)
    ((1797, 64), True, True)
    """
    digits = load_digits()
    rng = check_random_state(random_state)
    data = (digits.data + rng.uniform(size=digits.data.shape)) / 17
    if return_X_y:
        return data, digits.target
    return Bunch(
        data=data,
        images=data.reshape(-1, 8, 8),
        target=digits.target,
        feature_names=digits.feature_names,
        target_names=digits.target_names,
        DESCR=(
            "Dequantized digits: the pixel counts below plus U[0, 1) noise, "
            "divided by 17.\n\n" + digits.DESCR
        ),
    )
