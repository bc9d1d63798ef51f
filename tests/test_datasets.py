"""Tests for skvae.datasets: shapes, seeding, and each generator's promises."""

import numpy as np
import pytest
from scipy.stats import multivariate_normal
from sklearn.datasets import load_digits
from sklearn.linear_model import LinearRegression
from sklearn.utils._param_validation import InvalidParameterError

from skvae.datasets import (
    KnownDensity,
    load_digits_dequantized,
    make_known_density,
    make_latent_gaussian,
    make_mlp_mixing,
    make_mobius,
)

# (generator, keyword arguments, number of columns of the second output; 0 for
# a 1-D second output)
GENERATORS = [
    (make_mobius, {"n_features": 4}, 4),
    (make_mlp_mixing, {"n_features": 4}, 4),
    (make_latent_gaussian, {"n_components": 3, "n_features": 5}, 3),
    (make_known_density, {"n_features": 3}, 0),
]
GENERATOR_IDS = [generator.__name__ for generator, _, _ in GENERATORS]


def jacobians(f, points, step=1e-6):
    """Central finite-difference Jacobians of f, shape (m, n_out, n_in)."""
    points = np.asarray(points, dtype=np.float64)
    columns = []
    for k in range(points.shape[1]):
        shift = np.zeros(points.shape[1])
        shift[k] = step
        columns.append((f(points + shift) - f(points - shift)) / (2 * step))
    return np.stack(columns, axis=2)


def ima_contrast(J):
    """Sum of log column norms minus half the log-determinant of J^T J."""
    _, logdet = np.linalg.slogdet(np.swapaxes(J, 1, 2) @ J)
    return np.log(np.linalg.norm(J, axis=1)).sum(axis=1) - 0.5 * logdet


def test_ima_contrast_helper_matches_hand_computation():
    # Columns (1, 0) and (1, 1): log sqrt(2) - 0.5 log det([[1, 1], [1, 2]]).
    J = np.array([[[1.0, 1.0], [0.0, 1.0]]])
    assert ima_contrast(J) == pytest.approx([0.5 * np.log(2)])
    assert ima_contrast(np.diag([2.0, 3.0])[None]) == pytest.approx([0.0], abs=1e-12)


@pytest.mark.parametrize(
    ("generator", "kwargs", "width"), GENERATORS, ids=GENERATOR_IDS
)
def test_shapes_and_dtypes(generator, kwargs, width):
    X, second = generator(7, random_state=0, **kwargs)
    n_features = kwargs["n_features"]
    assert X.shape == (7, n_features)
    assert second.shape == ((7, width) if width else (7,))
    for array in (X, second):
        assert array.dtype == np.float64
        assert np.isfinite(array).all()


@pytest.mark.parametrize(
    ("generator", "kwargs", "width"), GENERATORS, ids=GENERATOR_IDS
)
def test_seeding(generator, kwargs, width):
    first = generator(20, random_state=3, **kwargs)
    again = generator(20, random_state=np.random.RandomState(3), **kwargs)
    other = generator(20, random_state=4, **kwargs)
    for a, b, c in zip(first, again, other, strict=True):
        np.testing.assert_array_equal(a, b)
        assert not np.allclose(a, c)


@pytest.mark.parametrize("generator", [make_mobius, make_mlp_mixing])
def test_returned_mixing_reproduces_observations(generator):
    X, S, mixing = generator(50, random_state=0, return_map=True)
    np.testing.assert_allclose(mixing(S), X, rtol=0, atol=1e-12)
    assert S.min() >= -0.5
    assert S.max() <= 0.5


def test_maps_do_not_depend_on_n_samples():
    points = np.random.RandomState(0).uniform(-0.5, 0.5, size=(10, 3))
    *_, small = make_mlp_mixing(5, random_state=1, return_map=True)
    *_, large = make_mlp_mixing(50, random_state=1, return_map=True)
    np.testing.assert_array_equal(small(points), large(points))
    *_, small = make_latent_gaussian(5, 3, random_state=1, return_map=True)
    *_, large = make_latent_gaussian(50, 3, random_state=1, return_map=True)
    np.testing.assert_array_equal(small(points), large(points))
    *_, small = make_known_density(5, 3, random_state=1, return_density=True)
    *_, large = make_known_density(50, 3, random_state=1, return_density=True)
    np.testing.assert_array_equal(
        small.score_samples(points), large.score_samples(points)
    )


@pytest.mark.parametrize("seed", range(3))
@pytest.mark.parametrize("n_features", [2, 3, 5])
def test_mobius_is_conformal(seed, n_features):
    X, S, mixing = make_mobius(200, n_features, random_state=seed, return_map=True)
    np.testing.assert_allclose(X.mean(axis=0), 0, atol=1e-12)
    J = jacobians(mixing, S[:20])
    assert np.abs(ima_contrast(J)).max() < 1e-8
    # Conformal, not only orthogonal columns: all columns have the same length.
    norms = np.linalg.norm(J, axis=1)
    np.testing.assert_allclose(norms, norms[:, :1].repeat(n_features, 1), rtol=1e-6)


def test_mobius_works_in_one_dimension():
    X, S = make_mobius(10, 1, random_state=0)
    assert X.shape == S.shape == (10, 1)
    # 1/(s - a) is strictly monotone on the interval of sources.
    order = np.argsort(S[:, 0])
    assert np.all(np.diff(X[order, 0]) > 0) or np.all(np.diff(X[order, 0]) < 0)


@pytest.mark.parametrize("seed", range(5))
@pytest.mark.parametrize("n_features", [2, 3])
def test_mlp_mixing_has_positive_ima_contrast(seed, n_features):
    _, S, mixing = make_mlp_mixing(50, n_features, random_state=seed, return_map=True)
    J = jacobians(mixing, S)
    contrast = ima_contrast(J)
    assert contrast.min() > 0.05
    assert contrast.mean() > 0.2
    assert np.linalg.svd(J, compute_uv=False).min() > 0.1


def test_mlp_mixing_contrast_grows_with_dimension():
    contrasts = []
    for n_features in (2, 5):
        _, S, mixing = make_mlp_mixing(30, n_features, random_state=0, return_map=True)
        contrasts.append(ima_contrast(jacobians(mixing, S)).mean())
    assert contrasts[1] > contrasts[0]


@pytest.mark.parametrize(("n_layers", "linear"), [(1, True), (2, False), (3, False)])
def test_mlp_mixing_layers(n_layers, linear):
    X, S = make_mlp_mixing(2000, 3, n_layers=n_layers, random_state=0)
    r2 = LinearRegression().fit(S, X).score(S, X)
    if linear:
        assert r2 == pytest.approx(1.0, abs=1e-12)
    else:
        assert r2 < 0.99


@pytest.mark.parametrize("seed", range(3))
def test_invertible_latent_gaussian_is_strongly_invertible(seed):
    _, Z, generator = make_latent_gaussian(50, 3, 6, random_state=seed, return_map=True)
    # Include points far in the tails, where a bound that only held near the
    # bulk of the prior would break.
    points = np.vstack([Z, 4 * Z])
    singular_values = np.linalg.svd(jacobians(generator, points), compute_uv=False)
    assert singular_values.min() >= 0.5 - 1e-6
    reflected = points * [-1, 1, 1]
    distances = np.linalg.norm(generator(points) - generator(reflected), axis=1)
    # Injective: a point and its reflection map to distinct means, and
    # no closer than the smallest singular value allows.
    assert np.all(distances >= 0.5 * np.linalg.norm(points - reflected, axis=1) - 1e-9)


@pytest.mark.parametrize("seed", range(3))
def test_folding_latent_gaussian_maps_reflections_together(seed):
    _, Z, generator = make_latent_gaussian(
        50, 3, 6, invertible=False, random_state=seed, return_map=True
    )
    reflected = Z * [-1, 1, 1]
    np.testing.assert_array_equal(generator(Z), generator(reflected))
    assert np.abs(generator(Z) - generator(Z * [1, -1, 1])).max() > 0.1
    on_fold = Z * [0, 1, 1]
    singular_values = np.linalg.svd(jacobians(generator, on_fold), compute_uv=False)
    assert singular_values.min() < 1e-6


@pytest.mark.parametrize("noise", [0.0, 0.3])
def test_latent_gaussian_noise_level(noise):
    X, Z, generator = make_latent_gaussian(
        4000, 2, 8, noise=noise, random_state=0, return_map=True
    )
    residual = X - generator(Z)
    assert residual.std() == pytest.approx(noise, rel=0.05, abs=1e-15)
    np.testing.assert_allclose(Z.mean(axis=0), 0, atol=0.1)
    np.testing.assert_allclose(Z.std(axis=0), 1, atol=0.1)


def test_latent_gaussian_without_room_to_curve():
    X, Z = make_latent_gaussian(5, 2, 2, random_state=0)
    assert X.shape == Z.shape == (5, 2)


def integration_grid(density, random_state, n_points=300):
    """Cell centres covering the samples with a margin, and the cell area."""
    X = density.sample(20000, random_state=random_state)
    edges = [
        np.linspace(lo - 1, hi + 1, n_points + 1)
        for lo, hi in zip(X.min(0), X.max(0), strict=True)
    ]
    centres = [(e[1:] + e[:-1]) / 2 for e in edges]
    grid = np.stack(np.meshgrid(*centres, indexing="ij"), axis=-1).reshape(-1, 2)
    area = np.prod([e[1] - e[0] for e in edges])
    return grid, area, X


@pytest.mark.parametrize("seed", range(3))
def test_known_density_integrates_to_one(seed):
    *_, density = make_known_density(10, random_state=seed, return_density=True)
    grid, area, _ = integration_grid(density, random_state=seed)
    total = np.exp(density.score_samples(grid)).sum() * area
    assert total == pytest.approx(1.0, abs=0.01)


@pytest.mark.parametrize("seed", range(3))
def test_known_density_matches_its_samples(seed):
    X, log_p, density = make_known_density(50, random_state=seed, return_density=True)
    np.testing.assert_allclose(density.score_samples(X), log_p, rtol=1e-12)
    # The sampler and the density must describe the same distribution: compare
    # the mass of each quadrant, by integration and by counting.
    grid, area, samples = integration_grid(density, random_state=seed + 100)
    mass = np.exp(density.score_samples(grid)) * area
    for sign in ([1, 1], [1, -1], [-1, 1], [-1, -1]):
        in_grid = np.all(grid * sign > 0, axis=1)
        in_samples = np.all(samples * sign > 0, axis=1)
        assert mass[in_grid].sum() == pytest.approx(in_samples.mean(), abs=0.015)


def test_known_density_change_of_variables():
    # An independent reference in 3-D: push mixture points forward with the
    # documented map, and divide the mixture density by the finite-difference
    # Jacobian determinant of that map.
    *_, density = make_known_density(
        10, 3, n_centers=4, random_state=0, return_density=True
    )

    def forward(Y):
        warped = np.sinh(density.tail_weight * np.arcsinh(Y) - density.skewness)
        return warped @ density.rotation.T

    Y = np.random.RandomState(0).normal(scale=2.0, size=(30, 3))
    mixture = sum(
        w * multivariate_normal(m, c).pdf(Y)
        for w, m, c in zip(
            density.weights, density.means, density.covariances, strict=True
        )
    )
    _, log_det = np.linalg.slogdet(jacobians(forward, Y))
    np.testing.assert_allclose(
        density.score_samples(forward(Y)), np.log(mixture) - log_det, rtol=1e-7
    )


def test_known_density_rejects_wrong_width():
    *_, density = make_known_density(5, random_state=0, return_density=True)
    with pytest.raises(ValueError, match="X has 3 features, but the density is over 2"):
        density.score_samples(np.zeros((4, 3)))


def test_known_density_standard_normal_by_hand():
    density = KnownDensity([1.0], [[0.0, 0.0]], [np.eye(2)], np.eye(2), [1, 1], [0, 0])
    X = np.random.RandomState(0).standard_normal((5, 2))
    expected = multivariate_normal(np.zeros(2), np.eye(2)).logpdf(X)
    np.testing.assert_allclose(density.score_samples(X), expected, rtol=1e-12)
    assert repr(density) == "KnownDensity(n_features=2, n_centers=1)"


def test_load_digits_dequantized():
    bunch = load_digits_dequantized()
    counts = load_digits().data
    assert bunch.data.shape == (1797, 64)
    assert bunch.data.dtype == np.float64
    assert bunch.data.min() >= 0
    assert bunch.data.max() < 1
    # The noise stays inside each count's bin, and fills it.
    np.testing.assert_array_equal(np.floor(bunch.data * 17), counts)
    assert 0.45 < (bunch.data * 17 - counts).mean() < 0.55
    np.testing.assert_array_equal(bunch.images.reshape(-1, 64), bunch.data)
    np.testing.assert_array_equal(bunch.target, load_digits().target)
    assert "Dequantized" in bunch.DESCR

    X, y = load_digits_dequantized(return_X_y=True)
    np.testing.assert_array_equal(X, bunch.data)
    np.testing.assert_array_equal(y, bunch.target)
    other, _ = load_digits_dequantized(return_X_y=True, random_state=1)
    assert not np.allclose(other, X)


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda: make_mobius(0), "'n_samples' parameter of make_mobius"),
        (lambda: make_mobius(10, 2.5), "'n_features' parameter of make_mobius"),
        (lambda: make_mlp_mixing(10, 1), "'n_features' parameter of make_mlp_mixing"),
        (lambda: make_mlp_mixing(10, n_layers=0), "'n_layers' parameter"),
        (lambda: make_latent_gaussian(10, noise=-1.0), "'noise' parameter"),
        (lambda: make_latent_gaussian(10, 0), "'n_components' parameter"),
        (lambda: make_known_density(10, n_centers=0), "'n_centers' parameter"),
        (lambda: make_known_density(10, random_state="x"), "'random_state'"),
        (lambda: make_mobius(10, return_map="yes"), "'return_map' parameter"),
        (lambda: load_digits_dequantized(return_X_y=1), "'return_X_y' parameter"),
    ],
)
def test_invalid_parameters(call, message):
    with pytest.raises(InvalidParameterError, match=message):
        call()


def test_latent_gaussian_needs_room_for_the_latents():
    with pytest.raises(
        ValueError, match="n_features=2 must be at least n_components=3"
    ):
        make_latent_gaussian(10, 3, 2)
