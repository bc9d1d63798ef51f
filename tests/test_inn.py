"""INNAutoencoder: exact inverse, exact density, information per layer."""

import warnings

import numpy as np
import pytest
import torch
from sklearn.decomposition import PCA
from sklearn.exceptions import ConvergenceWarning
from sklearn.model_selection import GridSearchCV
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from skvae import INNAutoencoder
from skvae.diagnostics import knn_entropy

SMALL = dict(n_blocks=3, subnet_layers=(16,), batch_size=64, random_state=0)


def _fit(X, **params):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        return INNAutoencoder(**{**SMALL, **params}).fit(X)


def ring(n_samples, seed=0):
    rng = np.random.default_rng(seed)
    angle = rng.uniform(0, 2 * np.pi, n_samples)
    return np.c_[np.cos(angle), np.sin(angle)] + 0.2 * rng.normal(size=(n_samples, 2))


def test_full_code_inverts_exactly():
    X = np.random.default_rng(0).normal(size=(300, 5))
    inn = _fit(X, n_components=5, max_iter=20)
    np.testing.assert_allclose(inn.inverse_transform(inn.transform(X)), X, atol=1e-10)


@pytest.fixture(scope="module")
def ring_model():
    X = ring(1000)
    return X, _fit(X, n_components=2, max_iter=25, learning_rate_init=3e-3)


def test_density_integrates_to_one_in_2d(ring_model):
    _, inn = ring_model
    edges = np.linspace(-4, 4, 321)
    centres = (edges[:-1] + edges[1:]) / 2
    grid = np.stack(np.meshgrid(centres, centres), -1).reshape(-1, 2)
    mass = np.exp(inn.score_samples(grid)).sum() * (edges[1] - edges[0]) ** 2
    assert mass == pytest.approx(1.0, abs=0.02)


def test_training_fits_the_density(ring_model):
    X, inn = ring_model
    untrained = _fit(X, n_components=2, max_iter=1)
    assert inn.score(X) > untrained.score(X) + 0.3


def test_training_starts_from_pca():
    rng = np.random.default_rng(0)
    X = rng.normal(size=(200, 5)) @ rng.normal(size=(5, 5)) + 3.0
    # A step of 1e-12 leaves the network where fit initialised it.
    inn = _fit(X, n_components=2, max_iter=1, learning_rate_init=1e-12)
    pca = PCA(2).fit(X)
    np.testing.assert_allclose(
        inn.inverse_transform(inn.transform(X)),
        pca.inverse_transform(pca.transform(X)),
        atol=1e-4,
    )


def test_parameter_count_does_not_depend_on_code_size():
    X = np.random.default_rng(0).normal(size=(50, 6))
    counts = {
        sum(p.numel() for p in _fit(X, n_components=k, max_iter=1).module_.parameters())
        for k in (1, 3, 6)
    }
    assert len(counts) == 1


def test_samples_and_reconstructions_have_the_data_shape():
    X = ring(500)
    inn = _fit(X, n_components=1, max_iter=10)
    assert inn.sample(7).shape == (7, 2)
    np.testing.assert_array_equal(inn.sample(7), inn.sample(7))
    assert inn.inverse_transform(inn.transform(X)).shape == X.shape


def test_information_profile_is_flat_for_a_volume_preserving_network():
    X = np.random.default_rng(0).normal(size=(1000, 4))
    inn = _fit(X, n_components=2, max_iter=3)
    with torch.no_grad():
        for coupling in inn.module_.net.couplings:
            for subnet in (coupling.subnet1, coupling.subnet2):
                last = subnet[-1]
                n_scales = last.out_features // 2
                # Zero log-scales leave only shifts: additive couplings.
                last.weight[:n_scales] = 0.0
                last.bias[:n_scales] = 0.0
    profile = inn.information_profile(X)
    np.testing.assert_allclose(profile.block_log_det, 0.0, atol=1e-12)
    np.testing.assert_allclose(profile.layer_entropy, profile.layer_entropy[0])


def test_information_profile_on_gaussian_input():
    rng = np.random.default_rng(1)
    cov = np.diag([1.0, 0.5, 0.25])
    X = rng.multivariate_normal(np.zeros(3), cov, size=3000)
    inn = _fit(X, n_components=2, max_iter=1)
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for coupling in inn.module_.net.couplings:
            for subnet in (coupling.subnet1, coupling.subnet2):
                # A moderate random bend: far from volume-preserving, yet
                # smooth enough for a nearest-neighbour estimate afterwards.
                torch.nn.init.normal_(subnet[-1].weight, std=0.3, generator=generator)
    profile = inn.information_profile(X)
    exact_input = 0.5 * np.linalg.slogdet(2 * np.pi * np.e * cov)[1]
    assert profile.layer_entropy[0] == pytest.approx(exact_input, abs=0.1)
    assert np.ptp(profile.layer_entropy) > 0.15
    # Carried exactly through the blocks, the output entropy agrees with a
    # direct estimate on the outputs.
    with torch.no_grad():
        y, _ = inn.module_.double().net(torch.from_numpy(X))
    assert profile.layer_entropy[-1] == pytest.approx(knn_entropy(y.numpy()), abs=0.1)
    assert profile.discarded_information == pytest.approx(
        profile.layer_entropy[-1] - profile.code_entropy
    )


def test_grid_search_over_code_size_and_depth_in_a_pipeline():
    X = np.random.default_rng(0).normal(size=(300, 4)) @ np.diag([3, 2, 0.1, 0.05])
    pipe = make_pipeline(StandardScaler(), INNAutoencoder(max_iter=5, **SMALL))
    grid = {"innautoencoder__n_components": [1, 4], "innautoencoder__n_blocks": [1, 2]}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        search = GridSearchCV(pipe, grid, cv=2).fit(X)
    assert set(search.cv_results_["params"][0]) == set(grid)
    assert np.isfinite(search.cv_results_["mean_test_score"]).all()
    assert search.best_params_["innautoencoder__n_components"] == 4
