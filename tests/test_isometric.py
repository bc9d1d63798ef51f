"""IsometricVAE: THEORY section 5's formulas against independent references.

The formulas were derived, not read in the paper; each is checked here against
a reference computed another way: probabilistic PCA's closed form, a grid
integral of the model's marginal, the training loss minimised numerically,
autograd, and a data set whose density is known exactly.
"""

import itertools
import math
import pickle
import warnings

import numpy as np
import pytest
import scipy.sparse as sp
import torch
from numpy.polynomial.hermite_e import hermegauss
from scipy.optimize import minimize
from scipy.special import logsumexp
from scipy.stats import multivariate_normal, norm, spearmanr
from sklearn.decomposition import PCA, FactorAnalysis
from sklearn.exceptions import ConvergenceWarning
from sklearn.utils._param_validation import InvalidParameterError
from skorch.callbacks import LRScheduler
from torch import nn
from torch.optim.lr_scheduler import CosineAnnealingLR

from skvae import IsometricVAE
from skvae._base import _updated_moments
from skvae.datasets import make_known_density, make_latent_gaussian
from skvae.diagnostics import (
    decoder_jacobian_spectrum,
    ima_contrast,
    self_consistency,
)
from skvae.nn import IsometricGaussianVAE
from skvae.nn.gaussian import kl_to_standard_normal
from skvae.nn.isometric import _factor_analysis_noise


def linear_gaussian(n_samples, eigenvalues, noise, n_features=8, seed=0):
    """Centred Gaussian rows whose covariance has eigenvalues
    ``eigenvalues + noise`` (then ``noise``), along random axes."""
    rng = np.random.default_rng(seed)
    axes, _ = np.linalg.qr(rng.normal(size=(n_features, n_features)))
    variances = np.full(n_features, noise)
    variances[: len(eigenvalues)] += eigenvalues
    scaled = rng.normal(size=(n_samples, n_features)) * np.sqrt(variances)
    return scaled @ axes.T


def fit_quiet(estimator, X):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        return estimator.fit(X)


def annealed(max_iter):
    # A large learning rate finds the principal axes quickly (the rotation
    # towards orthogonal decoder columns is a slow direction); annealing it to
    # zero then removes the noise the large steps leave in the variances.
    return dict(
        max_iter=max_iter,
        n_iter_no_change=max_iter,
        tol=0.0,
        callbacks=[LRScheduler(CosineAnnealingLR, T_max=max_iter)],
    )


def affine_annealed(n_components, batch_size, max_iter, **params):
    """An IsometricVAE with affine networks whose training gets close to the
    optimum of its loss fast: a large learning rate, then annealed."""
    return IsometricVAE(
        n_components,
        encoder_layers=(),
        decoder_layers=(),
        batch_size=batch_size,
        learning_rate_init=0.1,
        random_state=0,
        **params,
        **annealed(max_iter),
    )


def linear_model_at_optimum(beta=0.3, seed=0, weights=None):
    """A linear IsometricGaussianVAE at the exact optimum of its loss.

    Decoder W z + b with columns orthogonal in the metric diag(1 / weights)
    (the identity by default), so the posterior of the Gaussian model with
    variances (beta / 2) weights is diagonal and an affine encoder is exact;
    the marginal is N(b, W W^T + (beta / 2) diag(weights)).
    """
    rng = np.random.default_rng(seed)
    n_features, n_components = 5, 2
    weights = np.ones(n_features) if weights is None else np.asarray(weights)
    noise = beta / 2 * weights
    q, _ = np.linalg.qr(rng.normal(size=(n_features, n_components)))
    W = np.sqrt(weights)[:, None] * q * np.array([2.0, 0.7])
    b = rng.normal(size=n_features)
    vae = IsometricGaussianVAE(
        n_features,
        n_components,
        beta=beta,
        encoder_layers=(),
        decoder_layers=(),
        noise="isotropic" if weights is None else "per_feature",
    ).double()
    post_var = 1.0 / (1.0 + (W**2 / noise[:, None]).sum(0))
    A = (W / noise[:, None] * post_var).T
    with torch.no_grad():
        vae.noise_weights.copy_(torch.from_numpy(weights))
        vae.decoder[0].weight.copy_(torch.from_numpy(W))
        vae.decoder[0].bias.copy_(torch.from_numpy(b))
        encoder = vae.encoder[0]
        encoder.weight.zero_()
        encoder.bias.zero_()
        encoder.weight[:n_components] = torch.from_numpy(A)
        encoder.bias[:n_components] = torch.from_numpy(-A @ b)
        encoder.bias[n_components:] = torch.from_numpy(np.log(post_var))
    marginal = multivariate_normal(b, W @ W.T + np.diag(noise))
    return vae, marginal


# -- the formulas, on models built by hand -------------------------------------


def test_isometric_density_is_exact_for_the_linear_optimum():
    vae, marginal = linear_model_at_optimum()
    x = marginal.rvs(size=50, random_state=1)
    log_p = vae.isometric_log_prob(torch.from_numpy(x)).detach().numpy()
    np.testing.assert_allclose(log_p, marginal.logpdf(x), rtol=1e-12)


def test_per_feature_noise_density_and_isometry_are_exact_at_the_linear_optimum():
    weights = np.array([0.2, 0.5, 1.0, 1.3, 2.0])
    vae, marginal = linear_model_at_optimum(weights=weights)
    x = marginal.rvs(size=50, random_state=1)
    log_p = vae.isometric_log_prob(torch.from_numpy(x)).detach().numpy()
    np.testing.assert_allclose(log_p, marginal.logpdf(x), rtol=1e-12)
    column_norms, max_cosine = vae.isometry(torch.from_numpy(x[:10]), [0, 1])
    torch.testing.assert_close(column_norms, torch.ones_like(column_norms))
    torch.testing.assert_close(max_cosine, torch.zeros_like(max_cosine))
    # The Euclidean reading of the same decoder is not an isometry.
    vae.noise_weights.fill_(1.0)
    assert vae.isometry(torch.from_numpy(x[:10]), [0, 1])[1].gt(0.01).all()


@pytest.mark.parametrize("n_components", [1, 3])
def test_factor_analysis_noise_matches_scikit_learn(n_components):
    rng = np.random.default_rng(0)
    loadings = rng.normal(size=(n_components, 7))
    noise = rng.uniform(0.05, 2.0, size=7)
    X = rng.normal(size=(500, n_components)) @ loadings + rng.normal(
        size=(500, 7)
    ) * np.sqrt(noise)
    reference = FactorAnalysis(n_components, svd_method="lapack").fit(X)
    ours = _factor_analysis_noise(torch.from_numpy(X - X.mean(0)), n_components)
    np.testing.assert_allclose(ours.numpy(), reference.noise_variance_, rtol=1e-8)


def test_isometric_density_equals_theory_formula_term_by_term():
    # THEORY section 5, written out with its constants, for a random
    # non-linear model: the module must compute exactly this expression.
    beta, n_features, n_components = 0.05, 6, 3
    g = torch.Generator().manual_seed(0)
    vae = IsometricGaussianVAE(
        n_features, n_components, beta=beta, encoder_layers=(7,), generator=g
    ).double()
    x = torch.randn(9, n_features, generator=g, dtype=torch.float64)
    with torch.no_grad():
        mean, log_var = (t.numpy() for t in vae.posterior(x))
        residual = ((x - vae.decoder(torch.from_numpy(mean))).numpy() ** 2).sum(1)
        estimate = vae.isometric_log_prob(x).numpy()
    expected = (
        norm.logpdf(mean).sum(1)
        + 0.5 * log_var.sum(1)
        + n_components / 2 * math.log(2 / beta)
        - residual / beta
        - (n_features - n_components) / 2 * math.log(math.pi * beta)
    )
    np.testing.assert_allclose(estimate, expected, rtol=1e-12)


class Curve(nn.Module):
    """The decoder mean f(z) = (2 z, sin 2z), a curved line in the plane."""

    def forward(self, z):
        return torch.cat([2 * z, torch.sin(2 * z)], dim=-1)


def _curve_np(z):
    return np.stack([2 * z, np.sin(2 * z)], axis=-1)


def _optimal_posterior(x, beta):
    """Minimise the training loss E_q ||x - f(z)||^2 + beta KL over (mu, log s^2).

    The expectation is a 40-point Gauss-Hermite quadrature, exact to far
    below the tolerances used.
    """
    nodes, weights = hermegauss(40)
    weights = weights / weights.sum()

    def loss(params):
        mean, log_var = params
        z = mean + math.exp(log_var / 2) * nodes
        distortion = weights @ ((x - _curve_np(z)) ** 2).sum(1)
        return distortion + beta * 0.5 * (mean**2 + math.exp(log_var) - log_var - 1)

    start = np.array([x[0] / 2, math.log(beta / 8)])
    fit = minimize(
        loss,
        start,
        method="Nelder-Mead",
        options=dict(xatol=1e-10, fatol=1e-14, maxiter=5000),
    )
    return fit.x


@pytest.mark.parametrize("beta", [2e-2, 2e-3])
def test_optimal_encoder_makes_the_decoder_a_scaled_isometry_and_density_exact(
    beta,
):
    """At the optimum of the loss ||df/dz||^2 = (beta/2)(sigma^-2 - 1), and the
    isometric estimate matches log p(x) integrated on a grid."""
    noise = beta / 2
    vae = IsometricGaussianVAE(2, 1, beta=beta, encoder_layers=()).double()
    vae.decoder = Curve()
    grid = np.linspace(-6, 6, 100_001)
    for z0, offset in [(0.3, 1.0), (-1.0, -1.0), (0.8, 0.0), (1.5, 2.0)]:
        tangent = np.array([2.0, 2 * math.cos(2 * z0)])
        normal = np.array([-tangent[1], tangent[0]]) / np.linalg.norm(tangent)
        x = _curve_np(np.array(z0)) + offset * math.sqrt(noise) * normal
        mean, log_var = _optimal_posterior(x, beta)

        column_norm2 = 4 + 4 * math.cos(2 * mean) ** 2
        isometric_norm2 = noise * math.expm1(-log_var)
        # Derived by linearising f around mu: exact as beta -> 0.
        assert column_norm2 == pytest.approx(isometric_norm2, rel=math.sqrt(beta))

        log_joint = (
            -((x - _curve_np(grid)) ** 2).sum(1) / (2 * noise)
            - math.log(2 * math.pi * noise)
            + norm.logpdf(grid)
        )
        exact = logsumexp(log_joint) + math.log(grid[1] - grid[0])
        vae.posterior = lambda _, m=mean, v=log_var: (
            torch.tensor([[m]], dtype=torch.float64),
            torch.tensor([[v]], dtype=torch.float64),
        )
        estimate = vae.isometric_log_prob(torch.from_numpy(x[None])).item()
        assert estimate == pytest.approx(exact, abs=0.5 * beta)


def test_importance_is_the_pca_eigenvalue_at_the_linear_optimum():
    vae, marginal = linear_model_at_optimum()
    x = torch.from_numpy(marginal.rvs(size=4, random_state=0))
    eigenvalues = np.linalg.eigvalsh(marginal.cov)[::-1][:2]
    importance = vae.importance(x).detach().numpy()
    np.testing.assert_allclose(importance, np.tile(eigenvalues, (4, 1)), rtol=1e-12)


def test_loss_is_the_squared_error_plus_beta_kl_over_beta():
    beta = 0.2
    g = torch.Generator().manual_seed(0)
    vae = IsometricGaussianVAE(4, 2, beta=beta, encoder_layers=(8,), generator=g)
    vae = vae.double()
    x = torch.randn(6, 4, generator=g, dtype=torch.float64)
    loss = vae.loss(x, torch.Generator().manual_seed(3))

    mean, log_var = vae.posterior(x)
    eps = torch.randn(
        mean.shape, generator=torch.Generator().manual_seed(3), dtype=torch.float64
    )
    z = mean + torch.exp(0.5 * log_var) * eps
    sse = (x - vae.decoder(z)).square().sum(-1)
    constant = beta * x.shape[1] / 2 * math.log(math.pi * beta)
    expected = sse + beta * kl_to_standard_normal(mean, log_var) + constant
    torch.testing.assert_close(beta * loss, expected, rtol=1e-12, atol=1e-12)


def test_decoder_jacobian_matches_autograd():
    g = torch.Generator().manual_seed(0)
    vae = IsometricGaussianVAE(5, 3, encoder_layers=(6, 4), generator=g).double()
    z = torch.randn(4, 3, generator=g, dtype=torch.float64)
    expected = torch.stack(
        [torch.autograd.functional.jacobian(vae.decoder, row) for row in z]
    )
    torch.testing.assert_close(vae.decoder_jacobian(z), expected)


def test_isometry_is_ideal_at_the_linear_optimum_and_flags_a_shear():
    vae, marginal = linear_model_at_optimum()
    x = torch.from_numpy(marginal.rvs(size=10, random_state=0))
    column_norms, max_cosine = vae.isometry(x, [1, 0])
    torch.testing.assert_close(column_norms, torch.ones_like(column_norms))
    torch.testing.assert_close(max_cosine, torch.zeros_like(max_cosine))

    with torch.no_grad():
        weight = vae.decoder[0].weight
        weight[:, 1] += 0.5 * weight[:, 0]
    column_norms, max_cosine = vae.isometry(x, [0, 1])
    assert (max_cosine > 0.3).all()
    assert (column_norms[:, 1] > 1.2).all()
    assert vae.isometry(x, [1])[1].eq(0).all()
    column_norms, max_cosine = vae.isometry(x, [])
    assert column_norms.shape == (10, 0) and max_cosine.eq(0).all()


# -- the estimator on data with known answers -----------------------------------


@pytest.fixture(scope="module")
def linear_fit():
    """Eigenvalues 4, 1, 0.25 above noise 0.05 in 8-D; beta / 2 = the noise."""
    X = linear_gaussian(3000, [4.0, 1.0, 0.25], noise=0.05)
    vae = affine_annealed(3, batch_size=500, max_iter=200, beta=0.1)
    return fit_quiet(vae, X[:2000]), X[:2000], X[2000:]


def test_importance_and_score_match_pca_on_linear_data(linear_fit):
    vae, X_train, X_test = linear_fit
    pca = PCA(n_components=3).fit(X_train)
    np.testing.assert_allclose(vae.explained_variance_, pca.explained_variance_, 0.15)
    np.testing.assert_allclose(
        vae.explained_variance_ratio_, pca.explained_variance_ratio_, rtol=0.15
    )
    assert not vae.collapsed_.any()
    assert abs(vae.score(X_test) - pca.score(X_test)) < 0.2


def test_isometry_report_is_near_ideal_on_linear_data(linear_fit):
    vae, _, X_test = linear_fit
    report = vae.isometry_report(X_test)
    assert report.column_norms.shape == (len(X_test), 3)
    assert report.max_cosine.shape == (len(X_test),)
    np.testing.assert_allclose(np.median(report.column_norms, axis=0), 1, atol=0.1)
    assert np.median(report.max_cosine) < 0.1


def test_latents_below_half_beta_collapse():
    # Noise 0.01 < beta / 2 = 0.05: two of five latents have nothing to carry.
    X = linear_gaussian(2000, [4.0, 1.0, 0.25], noise=0.01, seed=1)
    beta = 0.1
    vae = affine_annealed(5, batch_size=250, max_iter=150, beta=beta)
    fit_quiet(vae, X)
    np.testing.assert_array_equal(vae.collapsed_, [False] * 3 + [True] * 2)
    pca = PCA().fit(X)
    np.testing.assert_allclose(
        vae.explained_variance_[:3], pca.explained_variance_[:3], rtol=0.15
    )
    np.testing.assert_allclose(vae.explained_variance_[3:], beta / 2, rtol=0.1)
    assert vae.isometry_report(X[:5]).column_norms.shape == (5, 3)

    # The exact optimum: probabilistic PCA with the noise fixed at beta / 2,
    # keeping only the directions whose eigenvalue exceeds it.
    kept = np.clip(pca.explained_variance_[:5] - beta / 2, 0, None)
    axes = pca.components_[:5]
    covariance = axes.T @ np.diag(kept) @ axes + beta / 2 * np.eye(X.shape[1])
    exact = multivariate_normal(pca.mean_, covariance).logpdf(X).mean()
    assert abs(vae.score(X) - exact) < 0.2


def curved_known_density(n_samples, n_features=8, noise=0.05, seed=0):
    """A skewed 2-D density on a curved surface in 8-D, with Gaussian noise.

    ``(y, h(y) + noise e)`` rotated, with ``y`` from ``make_known_density``
    and ``h`` a smooth graph: the exact log-density is
    ``log p_y(y) + log N(rest; h(y), noise^2 I)``.
    """
    Y, log_p_y = make_known_density(n_samples, 2, n_centers=1, random_state=seed)
    rng = np.random.default_rng(seed)
    frequencies = 0.5 * rng.normal(size=(n_features - 2, 2))
    phases = rng.uniform(0, 2 * np.pi, n_features - 2)
    height = np.sin(Y @ frequencies.T + phases)
    rest = height + noise * rng.normal(size=height.shape)
    rotation, _ = np.linalg.qr(rng.normal(size=(n_features, n_features)))
    X = np.c_[Y, rest] @ rotation.T
    log_p = log_p_y + norm.logpdf(rest - height, scale=noise).sum(1)
    return X, log_p


def test_isometric_density_ranks_a_known_density():
    X, log_p = curved_known_density(3000)
    vae = IsometricVAE(
        n_components=2,
        beta=0.005,  # beta / 2 = noise ** 2
        encoder_layers=(32, 32),
        batch_size=256,
        learning_rate_init=1e-2,
        random_state=0,
        **annealed(80),
    )
    fit_quiet(vae, X[:2000])
    assert spearmanr(vae.score_samples(X[2000:]), log_p[2000:])[0] >= 0.9


# -- the estimator's contract ---------------------------------------------------


def test_transform_orders_latents_by_importance_consistently(linear_fit):
    vae, _, X_test = linear_fit
    assert np.all(np.diff(vae.explained_variance_) <= 0)
    assert sorted(vae.components_order_) == [0, 1, 2]
    np.testing.assert_array_equal(
        vae.components_order_, vae.module_.latent_order.numpy()
    )
    Z = vae.transform(X_test)
    with torch.no_grad():
        x = torch.tensor(X_test, dtype=torch.float32)
        codes = vae.module_.encode(x)
        decoded = vae.module_.decode(codes).numpy()
        # The networks keep their training order; the buffer maps it.
        network = vae.module_.encoder(
            (x - vae.module_.data_shift) / vae.module_.data_scale
        )
    np.testing.assert_allclose(Z, codes.numpy(), atol=1e-4)
    np.testing.assert_allclose(Z, network[:, vae.components_order_].numpy(), atol=1e-4)
    np.testing.assert_allclose(vae.inverse_transform(Z), decoded, atol=1e-4)
    # Column j of transform carries the variance explained_variance_ ranks:
    # the code variance of a latent is 1 - sigma_j^2 = 1 - (beta/2) / I_j.
    np.testing.assert_allclose(
        Z.var(0), 1 - vae.beta / 2 / vae.explained_variance_, rtol=0.1
    )


def test_iwae_estimate_agrees_and_is_row_independent(linear_fit):
    vae, _, X_test = linear_fit
    isometric = vae.score_samples(X_test)
    iwae = pickle.loads(pickle.dumps(vae)).set_params(
        density_estimate="iwae", n_importance_samples=50
    )
    full = iwae.score_samples(X_test)
    np.testing.assert_allclose(iwae.score_samples(X_test[7:9]), full[7:9], rtol=1e-12)
    np.testing.assert_array_equal(iwae.score_samples(X_test), full)
    # At the linear optimum both estimate the exact marginal.
    assert abs(full.mean() - isometric.mean()) < 0.05
    assert not np.array_equal(full, isometric)


@pytest.fixture(scope="module")
def reordered_fit():
    """A small fit whose importance order is not the training order."""
    X, _ = make_latent_gaussian(300, n_components=3, n_features=6, random_state=0)
    vae = IsometricVAE(3, encoder_layers=(16,), max_iter=5, random_state=0)
    vae = fit_quiet(vae, X)
    assert not np.array_equal(vae.components_order_, np.arange(3))
    return vae, X


def test_diagnostics_see_the_latents_of_transform(reordered_fit):
    vae, X = reordered_fit
    Z = vae.transform(X)
    from_data = ima_contrast(vae, X)
    from_codes = ima_contrast(vae, Z=Z)
    np.testing.assert_array_equal(from_data.latents, Z)
    np.testing.assert_allclose(
        from_codes.local_contrast, from_data.local_contrast, rtol=1e-12
    )
    np.testing.assert_allclose(
        decoder_jacobian_spectrum(vae, Z=Z).singular_values,
        decoder_jacobian_spectrum(vae, X).singular_values,
        rtol=1e-12,
    )
    consistency = self_consistency(vae, X, n_samples=20, random_state=0)
    np.testing.assert_allclose(
        consistency.reconstruction_error,
        np.sum((X - vae.inverse_transform(Z)) ** 2, axis=1),
        rtol=1e-12,
    )
    # Column j of the encoder's variances is latent j of transform.
    np.testing.assert_allclose(
        vae.beta_ / 2 * (1 / consistency.encoder_variance).mean(0),
        vae.explained_variance_,
        rtol=1e-6,
    )


def test_reordering_on_warm_start_keeps_every_view_consistent(reordered_fit):
    vae, X = reordered_fit
    vae = pickle.loads(pickle.dumps(vae))
    before = vae.transform(X)
    order_before = vae.components_order_.copy()
    # A stand-in for a warm-started run that changes the ranking: the
    # module reorders, and the fitted attributes follow its buffer.
    vae.module_.order_latents([2, 0, 1])
    vae._after_training(X, incremental=False)
    assert np.all(np.diff(vae.explained_variance_) <= 0)
    np.testing.assert_array_equal(vae.components_order_, order_before)
    np.testing.assert_allclose(vae.transform(X), before, rtol=1e-12)
    np.testing.assert_allclose(
        vae.inverse_transform(before), vae.inverse_transform(vae.transform(X))
    )
    with pytest.raises(ValueError, match="permutation"):
        vae.module_.order_latents([0, 0, 1])


def test_generative_parameters_as_factor_analysis(reordered_fit):
    vae, X = reordered_fit
    np.testing.assert_allclose(vae.mean_, X.mean(0), rtol=1e-12)
    np.testing.assert_allclose(vae.noise_variance_, np.full(6, vae.beta_ / 2))
    fixed = fit_quiet(IsometricVAE(2, beta=0.01, encoder_layers=(4,), max_iter=1), X)
    np.testing.assert_allclose(fixed.noise_variance_, np.full(6, 0.005))


def test_constant_data_has_no_variance_to_explain():
    vae = fit_quiet(IsometricVAE(encoder_layers=(4,), max_iter=2), np.ones((8, 3)))
    assert np.isnan(vae.explained_variance_ratio_).all()


def test_moments_accumulate_over_chunks_as_over_all_rows():
    X = sp.random(30, 6, density=0.4, random_state=0, format="csr")
    seen = 0, 0.0, 0.0
    bounds = [0, 1, 11, 30]  # a dense chunk of one row, then sparse chunks
    for start, stop in itertools.pairwise(bounds):
        chunk = X[start:stop]
        seen = _updated_moments(chunk if start else chunk.toarray(), *seen)
    n_seen, mean, var = seen
    assert n_seen == 30
    np.testing.assert_allclose(mean, X.toarray().mean(0), rtol=1e-12)
    np.testing.assert_allclose(var, X.toarray().var(0), rtol=1e-12)


def test_partial_fit_on_one_row_divides_by_the_variance_of_all_rows_seen():
    X = linear_gaussian(41, [4.0, 1.0], noise=0.1)
    vae = IsometricVAE(n_components=2, encoder_layers=(4,), random_state=0)
    vae.partial_fit(X[:40])
    vae.partial_fit(X[40:])  # RuntimeWarnings are errors in this suite
    assert vae.n_samples_seen_ == 41
    total = PCA().fit(X).explained_variance_.sum()
    np.testing.assert_allclose(
        vae.explained_variance_ratio_, vae.explained_variance_ / total, rtol=1e-12
    )
    # fit starts the count afresh.
    fit_quiet(vae.set_params(max_iter=1), X[:20])
    assert vae.n_samples_seen_ == 20
    np.testing.assert_allclose(vae.var_, X[:20].var(0), rtol=1e-12)


def factor_analysis_data(n_samples, seed=0):
    """Two factors in 8-D under noise whose variance differs 40-fold by
    feature, the model of factor analysis."""
    rng = np.random.default_rng(seed)
    loadings = rng.normal(size=(2, 8))
    noise = np.geomspace(0.02, 0.8, 8)
    Z = rng.normal(size=(n_samples, 2))
    return Z @ loadings + rng.normal(size=(n_samples, 8)) * np.sqrt(noise), noise


def test_per_feature_noise_reaches_factor_analysis_where_isotropic_cannot():
    X, noise = factor_analysis_data(4000)
    X_train, X_test = X[:3000], X[3000:]
    exact = FactorAnalysis(2, svd_method="lapack").fit(X_train).score(X_test)
    scores = {}
    for kind in ("isotropic", "per_feature"):
        vae = IsometricVAE(2, noise=kind, encoder_layers=(32,), random_state=0)
        scores[kind] = fit_quiet(vae, X_train).score(X_test)
    # The isotropic model's best is probabilistic PCA, about 1 nat below.
    assert exact - PCA(2).fit(X_train).score(X_test) > 0.5
    assert scores["isotropic"] < exact - 0.5
    assert abs(scores["per_feature"] - exact) < 0.1
    np.testing.assert_allclose(vae.noise_variance_, noise, rtol=0.2)
    np.testing.assert_allclose(np.mean(vae.noise_variance_), vae.beta_ / 2)
    total = np.sum(vae.var_ / (vae.noise_variance_ / np.mean(vae.noise_variance_)))
    np.testing.assert_allclose(
        vae.explained_variance_ratio_,
        vae.explained_variance_ / (total * 3000 / 2999),
        rtol=1e-12,
    )


def test_a_trained_per_feature_model_is_an_isometry_in_its_metric_only():
    X, _ = factor_analysis_data(3000)
    vae = affine_annealed(2, batch_size=500, max_iter=200, noise="per_feature")
    fit_quiet(vae, X)
    # Importances are PCA's eigenvalues of the data in the metric.
    weights = vae.noise_variance_ / np.mean(vae.noise_variance_)
    in_metric = PCA(2).fit(X / np.sqrt(weights)).explained_variance_
    np.testing.assert_allclose(vae.explained_variance_, in_metric, rtol=0.1)
    report = vae.isometry_report(X[:500])
    np.testing.assert_allclose(np.median(report.column_norms, axis=0), 1, atol=0.05)
    assert np.median(report.max_cosine) < 0.05
    # The same decoder read in the Euclidean metric: far from an isometry.
    vae.module_.noise_weights.fill_(1.0)
    euclidean = vae.isometry_report(X[:500])
    assert np.median(euclidean.max_cosine) > 0.15


def test_a_fixed_beta_scales_the_per_feature_weights():
    X, _ = factor_analysis_data(300)
    vae = fit_quiet(
        IsometricVAE(
            2,
            beta=0.2,
            noise="per_feature",
            max_iter=1,
            early_stopping=False,
            random_state=0,
        ),
        X,
    )
    np.testing.assert_allclose(np.mean(vae.noise_variance_), 0.1)
    reference = FactorAnalysis(2, svd_method="lapack").fit(X).noise_variance_
    np.testing.assert_allclose(
        vae.noise_variance_ / 0.1, reference / reference.mean(), rtol=1e-6
    )


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ({"beta": 0.0}, "'beta' parameter"),
        ({"noise": "diagonal"}, "'noise' parameter"),
        ({"density_estimate": "laplace"}, "'density_estimate' parameter"),
        ({"n_importance_samples": 0}, "'n_importance_samples' parameter"),
    ],
)
def test_bad_parameters_are_clear_errors(params, message):
    with pytest.raises(InvalidParameterError, match=message):
        IsometricVAE(**params).fit(np.ones((4, 2)))
