"""The VAE's formulas against references computed another way."""

import numpy as np
import pytest
import torch
from scipy.stats import gennorm, kstest, multivariate_normal
from torch.distributions import Normal, kl_divergence

from skvae.nn import GaussianVAE
from skvae.nn.gaussian import (
    GeneralizedNormalPrior,
    diagonal_normal_log_prob,
    kl_to_standard_normal,
    standard_normal_log_prob,
)


def test_gaussian_log_densities_match_torch_distributions():
    g = torch.Generator().manual_seed(0)
    x, mean, log_var = torch.randn(3, 5, 4, generator=g, dtype=torch.float64)
    expected = Normal(mean, torch.exp(0.5 * log_var)).log_prob(x).sum(-1)
    torch.testing.assert_close(diagonal_normal_log_prob(x, mean, log_var), expected)
    torch.testing.assert_close(
        standard_normal_log_prob(x), Normal(0.0, 1.0).log_prob(x).sum(-1)
    )
    q = Normal(mean, torch.exp(0.5 * log_var))
    torch.testing.assert_close(
        kl_to_standard_normal(mean, log_var),
        kl_divergence(q, Normal(0.0, 1.0)).sum(-1),
    )


def _linear_vae_with_exact_posterior(noise_var=0.3, seed=0):
    """A linear-Gaussian VAE whose encoder is the exact posterior.

    Decoder x = W z + b + N(0, s^2 I) with orthogonal columns in W, so the
    posterior covariance (I + W^T W / s^2)^-1 is diagonal and an affine
    encoder represents the posterior exactly.
    """
    rng = np.random.default_rng(seed)
    n_features, n_components = 5, 2
    q, _ = np.linalg.qr(rng.normal(size=(n_features, n_components)))
    W = q * np.array([2.0, 0.7])
    b = rng.normal(size=n_features)
    vae = GaussianVAE(
        n_features,
        n_components,
        encoder_layers=(),
        decoder_layers=(),
        decoder_variance=noise_var,
    ).double()
    precision = 1.0 + (W**2).sum(0) / noise_var
    post_var = 1.0 / precision
    A = (W / noise_var * post_var).T
    with torch.no_grad():
        vae.decoder[0].weight.copy_(torch.from_numpy(W))
        vae.decoder[0].bias.copy_(torch.from_numpy(b))
        encoder = vae.encoder[0]
        encoder.weight.zero_()
        encoder.bias.zero_()
        encoder.weight[:n_components] = torch.from_numpy(A)
        encoder.bias[:n_components] = torch.from_numpy(-A @ b)
        encoder.bias[n_components:] = torch.from_numpy(np.log(post_var))
    marginal = multivariate_normal(b, W @ W.T + noise_var * np.eye(n_features))
    return vae, marginal


def test_importance_weights_are_exact_under_the_true_posterior():
    vae, marginal = _linear_vae_with_exact_posterior()
    x = marginal.rvs(size=50, random_state=1)
    g = torch.Generator().manual_seed(0)
    log_p = vae.log_prob(torch.from_numpy(x), g, n_samples=1).detach().numpy()
    np.testing.assert_allclose(log_p, marginal.logpdf(x), rtol=1e-10)


def test_iwae_tightens_towards_the_exact_log_likelihood():
    vae, marginal = _linear_vae_with_exact_posterior()
    with torch.no_grad():
        # A proposal wider than the posterior (variance times e) leaves a gap
        # that importance sampling closes as the draws grow.
        vae.encoder[0].bias[2:] += 1.0
    x = torch.from_numpy(marginal.rvs(size=200, random_state=2))
    exact = marginal.logpdf(x.numpy()).mean()
    bounds = [
        vae.log_prob(x, torch.Generator().manual_seed(0), n_samples=k).mean().item()
        for k in (1, 10, 1000)
    ]
    assert bounds[0] < bounds[1] < bounds[2] <= exact + 0.02
    assert exact - bounds[2] < 0.25 * (exact - bounds[0])


def test_iwae_with_another_proposal_in_blocks_of_draws():
    vae, marginal = _linear_vae_with_exact_posterior()
    x = torch.from_numpy(marginal.rvs(size=20, random_state=3))
    with torch.no_grad():
        exact_q = vae.posterior(x)
        # The encoder, made poor: a proposal given instead of it restores
        # the exact weights.
        vae.encoder[0].bias[:2] += 0.5
        poor = vae.log_prob(x, torch.Generator().manual_seed(0), n_samples=1)
        log_p = vae.log_prob(
            x, torch.Generator().manual_seed(0), n_samples=1, proposal=exact_q
        )
    np.testing.assert_allclose(log_p.numpy(), marginal.logpdf(x.numpy()), rtol=1e-10)
    assert (poor < log_p - 1e-3).all()
    # In passes: the log-sum-exp of the draws of one pass for all K.
    weights = vae.importance_log_weights(
        x, torch.Generator().manual_seed(1), 40, proposal=exact_q
    )
    in_passes = vae.log_prob(
        x,
        torch.Generator().manual_seed(1),
        n_samples=40,
        samples_per_pass=16,
        proposal=exact_q,
    )
    torch.testing.assert_close(
        in_passes, torch.logsumexp(weights, 0) - np.log(40), rtol=1e-12, atol=0
    )


def test_samples_follow_the_linear_gaussian_marginal():
    vae, marginal = _linear_vae_with_exact_posterior()
    x = vae.sample(20000, torch.Generator().manual_seed(0)).detach().numpy()
    np.testing.assert_allclose(x.mean(0), marginal.mean, atol=0.05)
    np.testing.assert_allclose(np.cov(x.T), marginal.cov, atol=0.1)


def test_log_prob_depends_on_each_row_alone():
    g = torch.Generator().manual_seed(0)
    vae = GaussianVAE(4, 2, encoder_layers=(8,), generator=g).double()
    x = torch.randn(6, 4, generator=g, dtype=torch.float64)
    full = vae.log_prob(x, torch.Generator().manual_seed(5), n_samples=7)
    one = vae.log_prob(x[3:4], torch.Generator().manual_seed(5), n_samples=7)
    torch.testing.assert_close(full[3:4], one, rtol=1e-12, atol=0)


@pytest.mark.parametrize(
    "n_components, n_samples, samples_per_pass",
    [(2, 100, 32), (2, 100, 3), (3, 257, 40), (1, 33, 16), (5, 7, 1), (16, 50, 7)],
)
def test_log_prob_in_passes_equals_one_pass(n_components, n_samples, samples_per_pass):
    g = torch.Generator().manual_seed(0)
    vae = GaussianVAE(5, n_components, encoder_layers=(8,), generator=g).double()
    x = torch.randn(3, 5, generator=g, dtype=torch.float64)
    one_pass = vae.log_prob(x, torch.Generator().manual_seed(1), n_samples)
    in_passes = vae.log_prob(
        x, torch.Generator().manual_seed(1), n_samples, samples_per_pass
    )
    torch.testing.assert_close(in_passes, one_pass, rtol=1e-12, atol=0)


@pytest.mark.parametrize("likelihood", ["gaussian", "bernoulli"])
def test_initialisation_depends_on_the_generator_alone(likelihood):
    def build(seed):
        torch.manual_seed(seed)  # the global seed must not matter
        g = torch.Generator().manual_seed(0)
        return GaussianVAE(
            3, 2, encoder_layers=(5,), likelihood=likelihood, generator=g
        )

    a, b = build(1), build(2)
    for pa, pb in zip(a.parameters(), b.parameters(), strict=True):
        torch.testing.assert_close(pa, pb, rtol=0, atol=0)


def test_heteroscedastic_iwae_matches_the_marginal_by_quadrature():
    # One latent: p(x) = integral of p(x|z) N(z; 0, 1) dz on a fine grid is an
    # independent reference for the importance-weighted estimate.
    g = torch.Generator().manual_seed(0)
    vae = GaussianVAE(
        2, 1, encoder_layers=(8,), decoder_variance="heteroscedastic", generator=g
    ).double()
    with torch.no_grad():
        # Noise variance about 0.5: a posterior broad enough for a random encoder.
        vae.decoder[-1].bias[2:] = np.log(0.5)
    x = torch.randn(5, 2, generator=g, dtype=torch.float64)
    z = torch.linspace(-10, 10, 20001, dtype=torch.float64).reshape(-1, 1, 1)
    log_joint = vae.log_likelihood(x, z) + standard_normal_log_prob(z)
    exact = torch.logsumexp(log_joint, 0) + np.log(20 / 20000)
    with torch.no_grad():
        estimate = vae.log_prob(x, torch.Generator().manual_seed(1), n_samples=20000)
    torch.testing.assert_close(estimate, exact, atol=0.02, rtol=0)


def test_heteroscedastic_decoder_variance_depends_on_the_code():
    g = torch.Generator().manual_seed(0)
    vae = GaussianVAE(
        3, 2, encoder_layers=(8,), decoder_variance="heteroscedastic", generator=g
    )
    z = torch.randn(4, 2, generator=g)
    mean, log_var = vae.decoder_mean_and_log_var(z)
    assert mean.shape == log_var.shape == (4, 3)
    assert not torch.allclose(log_var[0], log_var[1])
    torch.testing.assert_close(vae.decode(z), mean)
    with pytest.raises(TypeError, match="heteroscedastic"):
        _ = vae.decoder_log_var


def test_heteroscedastic_variance_stays_above_its_floor_in_the_data_units():
    # A variance per code could otherwise sit on values the data repeat
    # exactly, where the likelihood has no bound.
    g = torch.Generator().manual_seed(0)
    vae = GaussianVAE(
        3, 1, encoder_layers=(8,), decoder_variance="heteroscedastic", generator=g
    )
    x = 5.0 * torch.randn(50, 3, generator=g)
    vae.initialize_from_data(x)
    with torch.no_grad():
        vae.decoder[-1].bias[3:] = -100.0
    _, log_var = vae.decoder_mean_and_log_var(torch.randn(4, 1, generator=g))
    mean_variance = (x - x.mean(0)).square().mean()
    floor = np.log(3e-3 * mean_variance.item())
    assert log_var.min().item() >= floor - 1e-4
    assert log_var.max().item() < floor + 1e-3


@pytest.mark.parametrize("shape", [1.0, 2.0, 8.0])
def test_generalized_normal_prior_matches_scipy(shape):
    prior = GeneralizedNormalPrior(shape)
    reference = gennorm(shape, scale=prior.scale)
    assert reference.var() == pytest.approx(1.0)
    z = torch.linspace(-3, 3, 13, dtype=torch.float64).reshape(-1, 1)
    np.testing.assert_allclose(
        prior.log_prob(z).numpy(), reference.logpdf(z.numpy().ravel()), rtol=1e-12
    )
    like = torch.empty(0, dtype=torch.float64)
    draws = prior.sample((4000, 1), torch.Generator().manual_seed(0), like)
    assert kstest(draws.numpy().ravel(), reference.cdf).pvalue > 0.01


def test_iwae_with_a_non_gaussian_prior_matches_quadrature():
    g = torch.Generator().manual_seed(0)
    vae = GaussianVAE(
        2, 1, encoder_layers=(8,), decoder_variance=0.5, prior_shape=8.0, generator=g
    ).double()
    x = torch.randn(5, 2, generator=g, dtype=torch.float64)
    z = torch.linspace(-3, 3, 20001, dtype=torch.float64).reshape(-1, 1, 1)
    log_joint = vae.log_likelihood(x, z) + vae.prior.log_prob(z)
    exact = torch.logsumexp(log_joint, 0) + np.log(6 / 20000)
    with torch.no_grad():
        estimate = vae.log_prob(x, torch.Generator().manual_seed(1), n_samples=20000)
    torch.testing.assert_close(estimate, exact, atol=0.02, rtol=0)
