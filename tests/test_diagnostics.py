"""skvae.diagnostics against closed forms and references computed another way."""

import copy
import itertools
import os
import subprocess
import sys
import warnings

import numpy as np
import pytest
import torch
from scipy.stats import multivariate_normal
from sklearn.exceptions import ConvergenceWarning, NotFittedError

from skvae import INNAutoencoder, VAETransformer
from skvae.datasets import make_latent_gaussian
from skvae.diagnostics import (
    amortization_gap,
    decoder_jacobian_spectrum,
    ima_contrast,
    knn_entropy,
    mean_correlation_coefficient,
    self_consistency,
)
from skvae.nn import LatentVariableModel


def quiet_fit(est, X):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        return est.fit(X)


@pytest.fixture(scope="module")
def linear_template():
    """An affine VAE on 4 features, 2 latents, whose weights tests overwrite."""
    est = VAETransformer(
        2,
        encoder_layers=(),
        decoder_layers=(),
        decoder_variance="learned",
        max_iter=1,
        random_state=0,
    )
    return quiet_fit(est, np.random.default_rng(0).normal(size=(20, 4)))


def set_linear(template, W, b, decoder_var, A=None, c=None, log_var=None):
    """A copy of ``template`` with decoder x = W z + b + N(0, diag decoder_var)
    and encoder mean A x + c, constant log-variance ``log_var``.

    Returns the estimator and a dict of its parameters as stored: float32
    weights round the values given, and references must use the stored ones.
    """
    est = copy.deepcopy(template)
    module = est.module_
    n_components = W.shape[1]
    encoder = module.encoder[0]
    with torch.no_grad():
        # The fixed buffers around the networks back to the identity, so
        # that the weights alone define the maps.
        module.data_shift.zero_()
        module.data_scale.fill_(1.0)
        module.decoder_offset.zero_()
        module.decoder[0].weight.copy_(torch.as_tensor(W))
        module.decoder[0].bias.copy_(torch.as_tensor(b))
        module.decoder_log_var_raw.copy_(torch.log(torch.as_tensor(decoder_var)))
        encoder.weight.zero_()
        encoder.bias.zero_()
        if A is not None:
            encoder.weight[:n_components] = torch.as_tensor(A)
            encoder.bias[:n_components] = torch.as_tensor(c)
            encoder.bias[n_components:] = torch.as_tensor(log_var)
    stored = dict(
        W=module.decoder[0].weight,
        b=module.decoder[0].bias,
        # As the float64 copy that scores float64 data computes it.
        decoder_var=torch.exp(copy.deepcopy(module).double().decoder_log_var),
        A=encoder.weight[:n_components],
        c=encoder.bias[:n_components],
        log_var=encoder.bias[n_components:],
    )
    return est, {k: t.detach().double().numpy() for k, t in stored.items()}


def linear_gaussian_posterior(W, b, decoder_var, X):
    """Exact posterior of z ~ N(0, I), x | z ~ N(W z + b, diag decoder_var)."""
    precision = np.eye(W.shape[1]) + W.T @ (W / decoder_var[:, None])
    covariance = np.linalg.inv(precision)
    means = (X - b) / decoder_var @ W @ covariance
    return means, covariance, precision


def linear_gaussian_elbo(W, b, decoder_var, x, mean, var):
    """Closed-form ELBO of q = N(mean, diag var) in the linear-Gaussian model."""
    residual = x - W @ mean - b
    expected_sq = residual**2 + (W**2) @ var
    log_lik = -0.5 * np.sum(expected_sq / decoder_var + np.log(2 * np.pi * decoder_var))
    kl = 0.5 * np.sum(mean**2 + var - np.log(var) - 1)
    return log_lik - kl


# -- IMA contrast and Jacobian spectrum ------------------------------------------


def test_ima_contrast_of_linear_decoder_is_minus_log_sine_of_column_angle(
    linear_template,
):
    rng = np.random.default_rng(1)
    X = rng.normal(size=(7, 4))
    b = rng.normal(size=4)
    q, _ = np.linalg.qr(rng.normal(size=(4, 2)))
    orthogonal = q * [3.0, 0.2]
    skewed = np.c_[q[:, 0], 0.6 * q[:, 0] + 0.8 * q[:, 1]] * [0.5, 2.0]
    contrasts = []
    for W in (orthogonal, skewed, rng.normal(size=(4, 2))):
        est, stored = set_linear(linear_template, W, b, np.ones(4))
        # For two columns c_IMA = -log sin(angle between them).
        W = stored["W"]
        cos = W[:, 0] @ W[:, 1] / np.linalg.norm(W, axis=0).prod()
        expected = -np.log(np.sqrt(1 - cos**2))
        from_data = ima_contrast(est, X)
        from_latents = ima_contrast(est, Z=rng.normal(size=(5, 2)))
        np.testing.assert_allclose(from_data.local_contrast, expected, atol=1e-12)
        np.testing.assert_allclose(from_latents.local_contrast, expected, atol=1e-12)
        assert from_data.global_contrast == pytest.approx(expected, abs=1e-12)
        contrasts.append(from_data.global_contrast)
    assert 0 <= contrasts[0] < 1e-12
    assert contrasts[1] == pytest.approx(-np.log(0.8), abs=1e-6)
    assert contrasts[2] > 0.01


def test_ima_contrast_of_three_columns_matches_gram_determinant():
    rng = np.random.default_rng(2)
    est = VAETransformer(
        3,
        encoder_layers=(),
        decoder_layers=(),
        decoder_variance="learned",
        max_iter=1,
        random_state=0,
    )
    est = quiet_fit(est, rng.normal(size=(10, 5)))
    W = est.module_.decoder[0].weight.detach().double().numpy()
    expected = (
        np.log(np.linalg.norm(W, axis=0)).sum() - 0.5 * np.linalg.slogdet(W.T @ W)[1]
    )
    result = ima_contrast(est, Z=rng.normal(size=(4, 3)))
    np.testing.assert_allclose(result.local_contrast, expected, rtol=1e-10)
    assert expected > 0


@pytest.fixture(scope="module")
def nonlinear_vae():
    X, _ = make_latent_gaussian(200, n_components=2, n_features=5, random_state=0)
    est = VAETransformer(
        2, encoder_layers=(16, 16), max_iter=3, activation="tanh", random_state=0
    )
    return quiet_fit(est, X), X


def test_spectrum_and_contrast_of_nonlinear_decoder_match_autograd(nonlinear_vae):
    est, X = nonlinear_vae
    X = X[:6]
    module = copy.deepcopy(est.module_).double()
    latents = est.transform(X)
    singular, contrast = [], []
    for z in latents:
        J = torch.autograd.functional.jacobian(
            lambda v: module.decode(v[None])[0], torch.from_numpy(z)
        ).numpy()
        singular.append(np.linalg.svd(J, compute_uv=False))
        # The definition, term by term.
        log_norms = np.log(np.linalg.norm(J, axis=0)).sum()
        contrast.append(log_norms - 0.5 * np.linalg.slogdet(J.T @ J)[1])
    spectrum = decoder_jacobian_spectrum(est, X)
    np.testing.assert_allclose(spectrum.singular_values, singular, rtol=1e-9)
    np.testing.assert_allclose(spectrum.smallest, np.array(singular)[:, -1], rtol=1e-9)
    np.testing.assert_allclose(
        spectrum.condition_number, [s[0] / s[-1] for s in singular], rtol=1e-9
    )
    np.testing.assert_allclose(spectrum.latents, latents)
    result = ima_contrast(est, X)
    np.testing.assert_allclose(result.local_contrast, contrast, rtol=1e-8)
    assert result.global_contrast == pytest.approx(np.mean(contrast))
    # float32 data is differentiated by the float32 model.
    single = ima_contrast(est, X.astype(np.float32)).local_contrast
    assert single.dtype == np.float32
    np.testing.assert_allclose(single, contrast, rtol=1e-3)


def test_jacobian_functions_need_only_encode_and_decode(linear_template):
    """A module that is not a GaussianVAE: the contrast of its linear decoder."""

    class LinearAutoencoder(LatentVariableModel):
        def __init__(self, W):
            super().__init__()
            self.decoder = torch.nn.Linear(*W.shape[::-1], bias=False)
            self.decoder.weight.data = torch.as_tensor(W, dtype=torch.float32)

        def encode(self, x):
            return x[:, : self.decoder.in_features]

        def decode(self, z):
            return self.decoder(z)

    W = np.array([[1.0, 1.0], [0.0, 1.0], [0.0, 0.0], [0.0, 0.0]])  # 45 degrees
    est = copy.deepcopy(linear_template)
    est.module_ = LinearAutoencoder(W)
    X = np.random.default_rng(0).normal(size=(3, 4))
    np.testing.assert_allclose(
        ima_contrast(est, X).local_contrast, -np.log(np.sqrt(0.5)), rtol=1e-12
    )
    np.testing.assert_allclose(
        decoder_jacobian_spectrum(est, X).singular_values,
        np.tile(np.linalg.svd(W, compute_uv=False), (3, 1)),
        rtol=1e-12,
    )
    for function in (self_consistency, amortization_gap):
        with pytest.raises(TypeError, match="GaussianVAE"):
            function(est, X)


def test_jacobian_functions_work_for_the_invertible_autoencoder():
    X = np.random.default_rng(0).normal(size=(40, 4))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        inn = INNAutoencoder(
            2, n_blocks=2, subnet_layers=(8,), max_iter=2, random_state=0
        ).fit(X)
    module = copy.deepcopy(inn.module_).double()
    latents = inn.transform(X[:5])
    expected = []
    for z in latents:
        J = torch.autograd.functional.jacobian(
            lambda v: module.decode(v[None])[0], torch.from_numpy(z)
        ).numpy()
        expected.append(np.linalg.svd(J, compute_uv=False))
    spectrum = decoder_jacobian_spectrum(inn, X[:5])
    np.testing.assert_allclose(spectrum.singular_values, expected, rtol=1e-9)
    np.testing.assert_allclose(spectrum.latents, latents)
    assert np.isfinite(ima_contrast(inn, Z=latents).local_contrast).all()


def test_jacobians_raise_no_deprecation_warning():
    # Forward mode scripts decompositions with the deprecated torch.jit.script
    # on its first use in a process, hence a fresh one.
    script = """
import numpy as np
from skvae import INNAutoencoder, VAETransformer
from skvae.diagnostics import ima_contrast
X = np.random.default_rng(0).normal(size=(20, 4))
vae = VAETransformer(2, encoder_layers=(4,), max_iter=1).fit(X)
ima_contrast(vae, X)
"""
    result = subprocess.run(
        [sys.executable, "-W", "error::DeprecationWarning", "-c", script],
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONWARNINGS": "ignore::UserWarning"},
        check=False,
    )
    assert result.returncode == 0, result.stderr[-2000:]


# -- mean correlation coefficient --------------------------------------------------


def test_mcc_is_one_for_permuted_rescaled_sources_and_finds_the_permutation():
    rng = np.random.default_rng(0)
    S = rng.uniform(-0.5, 0.5, size=(500, 4))
    perm = rng.permutation(4)
    Z = S[:, perm] * [-3.0, 0.1, 2.0, -1e3] + rng.normal(size=4)
    result = mean_correlation_coefficient(S, Z)
    assert result.score == pytest.approx(1.0, abs=1e-12)
    # Column perm[j] of S sits in column j of Z.
    assert {tuple(pair) for pair in result.matching} == {
        (p, j) for j, p in enumerate(perm)
    }
    np.testing.assert_allclose(np.abs(result.correlation[perm, range(4)]), 1.0)


def test_mcc_matches_brute_force_over_permutations_and_is_small_for_noise():
    rng = np.random.default_rng(1)
    S = rng.normal(size=(3000, 3))
    mixed = S @ rng.normal(size=(3, 3)) + 0.5 * rng.normal(size=(3000, 3))
    corr = np.array([[np.corrcoef(s, z)[0, 1] for z in mixed.T] for s in S.T])
    best = max(
        np.mean(np.abs(corr[range(3), list(p)]))
        for p in itertools.permutations(range(3))
    )
    assert mean_correlation_coefficient(S, mixed).score == pytest.approx(best)
    noise = rng.normal(size=(3000, 3))
    assert mean_correlation_coefficient(S, noise).score < 0.06


def test_mcc_rejects_bad_input():
    S = np.random.default_rng(0).normal(size=(10, 2))
    with pytest.raises(ValueError, match="same number of rows"):
        mean_correlation_coefficient(S, S[:5])
    with pytest.raises(ValueError, match="Column 1 of Z is constant"):
        mean_correlation_coefficient(S, np.c_[S[:, 0], np.ones(10)])


def test_knn_entropy_matches_the_gaussian_closed_form():
    rng = np.random.default_rng(0)
    cov = np.array([[2.0, 0.5, 0.0], [0.5, 1.0, 0.3], [0.0, 0.3, 0.5]])
    X = rng.multivariate_normal(np.zeros(3), cov, size=4000)
    exact = 0.5 * np.linalg.slogdet(2 * np.pi * np.e * cov)[1]
    assert knn_entropy(X) == pytest.approx(exact, abs=0.05)
    with pytest.raises(ValueError, match="repeated rows"):
        knn_entropy(np.vstack([X[:10], X[:10]]))
    with pytest.raises(ValueError, match="more than n_neighbors=3"):
        knn_entropy(X[:3])


# -- optimal encoder variance and self-consistency --------------------------------


def test_optimal_variance_formula_against_exact_linear_gaussian_posterior(
    linear_template,
):
    rng = np.random.default_rng(3)
    b = rng.normal(size=4)
    X = rng.normal(size=(6, 4))
    var = np.array([0.05, 0.2, 0.1, 0.4])
    # Columns orthogonal in the metric diag(1 / var): the exact posterior
    # covariance is diagonal, and the formula must equal it.
    q, _ = np.linalg.qr(rng.normal(size=(4, 2)))
    est, p = set_linear(linear_template, np.sqrt(var)[:, None] * q * [3, 0.5], b, var)
    _, covariance, _ = linear_gaussian_posterior(p["W"], p["b"], p["decoder_var"], X)
    assert abs(covariance[0, 1]) < 1e-6
    np.testing.assert_allclose(
        self_consistency(est, X).optimal_variance,
        np.tile(np.diag(covariance), (6, 1)),
        rtol=1e-6,
    )
    # Correlated posterior: the formula is the best factorised Gaussian's
    # variance 1 / diag(precision), below the true marginal variance.
    est, p = set_linear(linear_template, rng.normal(size=(4, 2)), b, var)
    _, covariance, precision = linear_gaussian_posterior(
        p["W"], p["b"], p["decoder_var"], X
    )
    np.testing.assert_allclose(
        self_consistency(est, X).optimal_variance,
        np.tile(1 / np.diag(precision), (6, 1)),
        rtol=1e-10,
    )
    assert np.all(1 / np.diag(precision) < 0.99 * np.diag(covariance))


def test_self_consistency_reconstruction_and_latent_errors_on_known_maps(
    linear_template,
):
    rng = np.random.default_rng(4)
    W, b = rng.normal(size=(4, 2)), rng.normal(size=4)
    A = np.linalg.pinv(W)
    X = rng.normal(size=(8, 4))
    Z = np.random.RandomState(0).standard_normal((20, 2))  # the prior draws
    est, p = set_linear(linear_template, W, b, np.ones(4), A, -A @ b, [-1, -2])
    result = self_consistency(est, X, n_samples=20, random_state=0)
    # The encoder inverts the decoder: z -> W z + b -> z, and f(mu(x)) is the
    # projection of x onto the decoder's affine plane.
    W, b, A, c = p["W"], p["b"], p["A"], p["c"]
    np.testing.assert_allclose(
        result.latent_error,
        np.sum((Z - ((Z @ W.T + b) @ A.T + c)) ** 2, axis=1),
        rtol=1e-6,
        atol=1e-20,
    )
    assert result.latent_error.max() < 1e-10
    reconstruction = (X @ A.T + c) @ W.T + b
    np.testing.assert_allclose(
        result.reconstruction_error, np.sum((X - reconstruction) ** 2, axis=1)
    )
    np.testing.assert_allclose(result.encoder_variance, np.exp([[-1, -2]] * 8))
    # A shrunk encoder is not self-consistent: ||z - z / 2||^2 = ||z||^2 / 4.
    shrunk, _ = set_linear(linear_template, W, b, np.ones(4), A / 2, -A @ b / 2, [0, 0])
    again = self_consistency(shrunk, n_samples=20, random_state=0)
    np.testing.assert_allclose(again.latent_error, np.sum(Z**2, axis=1) / 4, rtol=1e-6)
    assert again.reconstruction_error is None


def test_trained_linear_vae_is_self_consistent_only_with_small_decoder_variance():
    rng = np.random.default_rng(5)
    X = rng.normal(size=(400, 2)) @ rng.normal(size=(2, 3))
    results = {}
    for decoder_variance in (1e-2, 1.0):
        est = VAETransformer(
            2,
            encoder_layers=(),
            decoder_layers=(),
            decoder_variance=decoder_variance,
            batch_size=32,
            learning_rate_init=5e-2,
            random_state=0,
        )
        results[decoder_variance] = self_consistency(
            quiet_fit(est, X), X, n_samples=500, random_state=0
        )
    small, large = results[1e-2], results[1.0]
    assert small.reconstruction_error.mean() < 1e-2 * X.var(0).sum()
    assert small.latent_error.mean() < 1e-2 * 2
    assert large.latent_error.mean() > 10 * small.latent_error.mean()
    # The trained encoder's variances approach the optimum the formula gives
    # (from above, slowly, when the decoder variance is small).
    np.testing.assert_allclose(
        small.encoder_variance.mean(0), small.optimal_variance.mean(0), rtol=0.5
    )


# -- inference gaps ----------------------------------------------------------------


def test_amortization_gap_matches_linear_gaussian_closed_forms(linear_template):
    rng = np.random.default_rng(6)
    W, b = rng.normal(size=(4, 2)), rng.normal(size=4)
    var = np.array([0.3, 0.5, 0.2, 0.4])
    X = (rng.normal(size=(5, 2)) @ W.T + b) + np.sqrt(var) * rng.normal(size=(5, 4))
    _, covariance, precision = linear_gaussian_posterior(W, b, var, X)
    A = (W / var[:, None] @ covariance).T
    # A poor encoder: 60% of the posterior mean, 3 times the best variance.
    log_var = np.log(3 / np.diag(precision))
    est, p = set_linear(linear_template, W, b, var, 0.6 * A, -0.6 * A @ b, log_var)
    W, b, var = p["W"], p["b"], p["decoder_var"]
    gaps = amortization_gap(
        est, X, n_elbo_samples=20000, n_importance_samples=5000, random_state=0
    )

    means, covariance, precision = linear_gaussian_posterior(W, b, var, X)
    mean_field_var = 1 / np.diag(precision)
    encoder_means = X @ p["A"].T + p["c"]
    elbo = [
        linear_gaussian_elbo(W, b, var, x, m, np.exp(p["log_var"]))
        for x, m in zip(X, encoder_means, strict=True)
    ]
    best = [
        linear_gaussian_elbo(W, b, var, x, m, mean_field_var)
        for x, m in zip(X, means, strict=True)
    ]
    log_p = multivariate_normal(b, W @ W.T + np.diag(var)).logpdf(X)

    # The encoder's wide q makes ELBO[q] the noisiest estimate; its error is
    # that of the gap, whose standard error the function reports.
    stderr = gaps.amortization_gap_stderr
    assert np.all(np.abs(gaps.elbo - elbo) < 4 * stderr)
    assert np.all(np.abs(gaps.amortization_gap - np.subtract(best, elbo)) < 4 * stderr)
    assert np.all(stderr < 0.1)
    np.testing.assert_allclose(gaps.elbo_optimized, best, atol=0.03)
    assert np.all(gaps.amortization_gap > 0.3)
    # IWAE is biased low, the more so as the mean-field proposal is narrower
    # than the correlated posterior.
    assert np.all((gaps.log_likelihood - log_p > -0.05) & (gaps.log_likelihood < log_p))
    posterior_sd = np.sqrt(np.diag(covariance))
    np.testing.assert_allclose(
        gaps.mean_optimized, means, atol=0.1 * posterior_sd.min()
    )
    np.testing.assert_allclose(
        np.exp(gaps.log_var_optimized), np.tile(mean_field_var, (5, 1)), rtol=0.15
    )
    # The correlated posterior leaves a genuine approximation gap,
    # KL(mean-field q* || posterior), the same for every row.
    kl = 0.5 * (np.log(np.diag(precision)).sum() + np.linalg.slogdet(covariance)[1])
    assert kl > 0.05
    np.testing.assert_allclose(gaps.approximation_gap, kl, atol=0.06)


@pytest.fixture(scope="module")
def small_encoder_vae():
    X, _ = make_latent_gaussian(1000, n_components=2, n_features=6, random_state=0)
    est = VAETransformer(
        2, encoder_layers=(2,), decoder_layers=(32,), max_iter=30, random_state=0
    )
    return quiet_fit(est, X), X[:12]


def test_amortization_gap_is_nonnegative_and_below_log_likelihood(small_encoder_vae):
    est, X = small_encoder_vae
    gaps = amortization_gap(est, X, n_importance_samples=2000, random_state=0)
    assert np.all(gaps.amortization_gap > -3 * gaps.amortization_gap_stderr)
    # A 2-unit encoder cannot place every posterior: a clear gap.
    assert np.all(gaps.amortization_gap > 10 * gaps.amortization_gap_stderr)
    # Both sides are Monte Carlo estimates, good to a few hundredths of a nat.
    assert np.all(gaps.elbo_optimized <= gaps.log_likelihood + 0.05)
    np.testing.assert_allclose(
        gaps.log_likelihood - gaps.elbo,
        gaps.amortization_gap + gaps.approximation_gap,
    )


def test_amortization_gap_rows_are_independent_and_deterministic(small_encoder_vae):
    est, X = small_encoder_vae
    before = [(p.detach().clone(), p.grad) for p in est.module_.parameters()]
    before = [(p, None if g is None else g.clone()) for p, g in before]
    options = dict(
        max_iter=200, n_elbo_samples=200, n_importance_samples=300, random_state=0
    )
    full = amortization_gap(est, X[:6], **options)
    part = amortization_gap(est, X[[4, 1]], **options)
    for key, value in part.items():
        np.testing.assert_allclose(value, full[key][[4, 1]], rtol=1e-9, atol=1e-12)
    other = amortization_gap(est, X[:6], **{**options, "random_state": 1})
    assert not np.array_equal(other.elbo, full.elbo)
    # The fitted weights, and the gradients training left on them, are intact.
    for now, (value, grad) in zip(est.module_.parameters(), before, strict=True):
        assert torch.equal(now, value)
        assert (now.grad is None) == (grad is None)
        assert grad is None or torch.equal(now.grad, grad)


# -- input validation ---------------------------------------------------------------


def test_bad_input_gets_clear_errors(nonlinear_vae):
    est, X = nonlinear_vae
    unfitted = VAETransformer(2)
    for call in (
        lambda: ima_contrast(unfitted, X),
        lambda: decoder_jacobian_spectrum(unfitted, X),
        lambda: self_consistency(unfitted),
        lambda: amortization_gap(unfitted, X),
    ):
        with pytest.raises(NotFittedError):
            call()
    with pytest.raises(ValueError, match="features"):
        ima_contrast(est, X[:, :3])
    with pytest.raises(ValueError, match="n_components=2"):
        decoder_jacobian_spectrum(est, Z=np.zeros((3, 3)))
    with pytest.raises(ValueError, match="exactly one of X"):
        ima_contrast(est, X, Z=np.zeros((3, 2)))
    with pytest.raises(ValueError, match="exactly one of X"):
        ima_contrast(est)
    with pytest.raises(ValueError, match="features"):
        amortization_gap(est, X[:, :3])
    with pytest.raises(ValueError, match="n_mc_samples"):
        amortization_gap(est, X, n_mc_samples=0)
    bernoulli = quiet_fit(
        VAETransformer(2, encoder_layers=(4,), likelihood="bernoulli", max_iter=1),
        np.random.default_rng(0).uniform(size=(10, 3)),
    )
    with pytest.raises(ValueError, match="Gaussian decoder"):
        self_consistency(bernoulli)
