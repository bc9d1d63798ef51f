"""INNAutoencoder: exact inverse, exact density, information per layer."""

import functools
import pickle
import warnings

import numpy as np
import pytest
import torch
from sklearn.base import clone
from sklearn.decomposition import PCA
from sklearn.exceptions import ConvergenceWarning
from sklearn.model_selection import GridSearchCV
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from skvae import INNAutoencoder
from skvae.datasets import make_known_density
from skvae.diagnostics import knn_entropy

SMALL = dict(n_blocks=3, subnet_layers=(16,), batch_size=64, random_state=0)


class TanhSubnet(torch.nn.Module):
    """A user's coupling subnet: (n_rows, n_inputs) -> (n_rows, n_outputs)."""

    def __init__(self, n_inputs, n_outputs, hidden=12):
        super().__init__()
        self.layers = torch.nn.Sequential(
            torch.nn.Linear(n_inputs, hidden),
            torch.nn.Tanh(),
            torch.nn.Linear(hidden, n_outputs),
        )

    def forward(self, x):
        return self.layers(x)


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
    # No weight penalty: the ring is far from Gaussian in few nats per row.
    return X, _fit(X, n_components=2, learning_rate_init=3e-3, alpha=0.0)


def test_density_integrates_to_one_in_2d(ring_model):
    _, inn = ring_model
    edges = np.linspace(-4, 4, 321)
    centres = (edges[:-1] + edges[1:]) / 2
    grid = np.stack(np.meshgrid(centres, centres), -1).reshape(-1, 2)
    mass = np.exp(inn.score_samples(grid)).sum() * (edges[1] - edges[0]) ** 2
    assert mass == pytest.approx(1.0, abs=0.02)


def test_training_fits_the_density(ring_model):
    X, inn = ring_model
    untrained = _fit(X, n_components=2, max_iter=1, alpha=0.0)
    assert inn.score(X) > untrained.score(X) + 0.3


def test_training_starts_from_pca():
    rng = np.random.default_rng(0)
    X = rng.normal(size=(200, 5)) @ rng.normal(size=(5, 5)) + 3.0
    # A step of 1e-12 leaves the network where fit initialised it, from every
    # row.
    inn = _fit(
        X, n_components=2, max_iter=1, learning_rate_init=1e-12, early_stopping=False
    )
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
            # The gates of the log-scales: subnet1's first half, subnet2's
            # first half. Zero log-scales leave only shifts: additive couplings.
            n_first = coupling.n_first
            n_second = coupling.n_features - n_first
            coupling.gate[:n_second] = 0.0
            coupling.gate[2 * n_second : 2 * n_second + n_first] = 0.0
            assert coupling.gate.abs().max() > 0
    profile = inn.information_profile(X)
    # Only the fixed input layer changes volume, the same for every row.
    x = torch.tensor(X[:1], dtype=torch.float32)
    input_log_det = inn.module_.net.input_layer(x)[1].item()
    assert profile.block_log_det[0] == pytest.approx(input_log_det, rel=1e-6)
    np.testing.assert_allclose(profile.block_log_det[1:], 0.0, atol=1e-12)
    np.testing.assert_allclose(profile.layer_entropy[1:], profile.layer_entropy[1])


def test_information_profile_on_gaussian_input():
    rng = np.random.default_rng(1)
    cov = np.diag([1.0, 0.5, 0.25])
    X = rng.multivariate_normal(np.zeros(3), cov, size=3000)
    inn = _fit(X, n_components=2, max_iter=1)
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for coupling in inn.module_.net.couplings:
            # A moderate random bend: far from volume-preserving, yet smooth
            # enough for a nearest-neighbour estimate afterwards.
            torch.nn.init.normal_(coupling.gate, std=0.05, generator=generator)
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


def test_density_with_a_small_code_is_as_good_as_the_full_flow():
    # With the discarded outputs' widths learned, keeping fewer outputs
    # changes what the code holds, not how well the density fits. With a
    # fixed narrow width (the model of the paper) the held-out density of the
    # code sizes 2 and 1 fell hundreds of nats below the full flow's.
    X, log_p = make_known_density(1500, 4, random_state=0)
    train, test = X[:1000], X[1000:]
    params = dict(n_blocks=2, subnet_layers=(16,), max_iter=40, random_state=0)
    full = _fit(train, n_components=4, **params).score(test)
    assert full > log_p[1000:].mean() - 1.5
    for k in (2, 1):
        assert _fit(train, n_components=k, **params).score(test) > full - 0.5


def test_learned_widths_match_the_spread_of_the_outputs():
    rng = np.random.default_rng(0)
    X = rng.normal(size=(600, 5)) @ rng.normal(size=(5, 5))
    inn = _fit(X, n_components=2, max_iter=20, early_stopping=False)
    module = inn.module_
    with torch.no_grad():
        y = module.net(torch.tensor(X, dtype=torch.float32))[0]
        std = module.prior_log_std.exp()
    # The maximum-likelihood width of a centred normal is the root mean
    # square of what it describes.
    np.testing.assert_allclose(std, y.square().mean(0).sqrt(), rtol=0.1)
    assert std.max() / std.min() > 2


def test_everything_is_relative_to_the_data_scale():
    X = ring(400) @ np.array([[1.0, 0.3, 0.0], [0.0, 1.0, 0.5]])
    X = X + 0.05 * np.random.default_rng(1).normal(size=(400, 3))
    small = _fit(X, n_components=1, max_iter=5)
    large = _fit(1000 * X, n_components=1, max_iter=5)
    # Codes in the units of the data; the density changes by the Jacobian of
    # the change of units, log(1000) per feature.
    np.testing.assert_allclose(
        large.transform(1000 * X), 1000 * small.transform(X), rtol=1e-3, atol=1e-2
    )
    np.testing.assert_allclose(
        large.score_samples(1000 * X),
        small.score_samples(X) - 3 * np.log(1000),
        atol=1e-2,
    )


def test_weight_penalty_applies_in_training_only():
    X = np.random.default_rng(0).normal(size=(100, 3))
    module = _fit(X, n_components=1, max_iter=2, alpha=5.0).module_
    x = torch.tensor(X[:5], dtype=torch.float32)
    module.eval()
    evaluated = module.loss(x, None)
    module.train()
    trained = module.loss(x, None)
    module.eval()
    flat = torch.cat([p.reshape(-1) for p in module.net.parameters()])
    # Divided by the rows the model was initialised on (90 of them, the rest
    # held out for early stopping), added to the loss in nats per feature.
    penalty = 0.5 * 5.0 * flat.square().sum() / 90
    torch.testing.assert_close(trained - evaluated, penalty.expand(5))


def test_a_custom_subnet_starts_as_the_identity_and_trains():
    X = ring(600)
    inn = _fit(
        X, n_components=2, subnet=TanhSubnet, max_iter=1, learning_rate_init=1e-12
    )
    module = inn.module_
    coupling = module.net.couplings[0]
    assert isinstance(coupling.subnet1, TanhSubnet)
    # The subnet keeps its own initial weights; the gate closes the block.
    assert coupling.subnet1.layers[-1].weight.abs().min() > 0
    x = torch.tensor(X[:50], dtype=torch.float32)
    with torch.no_grad():
        h = module.net.input_layer(x)[0]
        for coupling in module.net.couplings:
            y, log_det = coupling(h)
            torch.testing.assert_close(y, h)
            assert log_det.abs().max() < 1e-6
    params = dict(subnet=TanhSubnet, learning_rate_init=3e-3, alpha=0.0)
    X = ring(1000)
    trained = _fit(X, n_components=2, max_iter=25, **params)
    assert trained.module_.net.couplings[0].gate.abs().max() > 0.01
    untrained = _fit(X, n_components=2, max_iter=1, **params)
    assert trained.score(X) > untrained.score(X) + 0.3
    code = trained.transform(X)
    np.testing.assert_allclose(trained.inverse_transform(code), X, atol=1e-10)


def test_a_subnet_callable_with_search_pickling_and_two_jobs():
    rng = np.random.default_rng(0)
    X = rng.normal(size=(200, 4)) @ np.diag([3, 2, 0.1, 0.05])
    wide = functools.partial(TanhSubnet, hidden=6)
    inn = INNAutoencoder(2, subnet=wide, **{**SMALL, "subnet_layers": (8,)})
    assert inn.get_params()["subnet"] is wide
    assert clone(inn).set_params(subnet=TanhSubnet).subnet is TanhSubnet
    grid = {"subnet": [None, TanhSubnet, wide]}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        searches = [
            GridSearchCV(inn.set_params(max_iter=3), grid, cv=2, n_jobs=n_jobs).fit(X)
            for n_jobs in (1, 2)
        ]
    np.testing.assert_allclose(
        searches[0].cv_results_["mean_test_score"],
        searches[1].cv_results_["mean_test_score"],
    )
    fitted = searches[0].best_estimator_
    again = pickle.loads(pickle.dumps(fitted))
    np.testing.assert_array_equal(again.score_samples(X), fitted.score_samples(X))
    subnets = [c.subnet1 for c in again.module_.net.couplings]
    assert all(type(s) is type(subnets[0]) for s in subnets)
