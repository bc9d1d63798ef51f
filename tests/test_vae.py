"""VAETransformer as a scikit-learn user meets it."""

import pickle
import warnings

import numpy as np
import pytest
import scipy.sparse as sp
import torch
from sklearn.covariance import EmpiricalCovariance
from sklearn.datasets import load_digits, make_moons
from sklearn.decomposition import PCA
from sklearn.exceptions import ConvergenceWarning, NotFittedError
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import GridSearchCV, StratifiedKFold, cross_val_score
from sklearn.neighbors import KNeighborsClassifier
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from skorch.callbacks import Callback, LRScheduler

from skvae import VAETransformer
from skvae.diagnostics import amortization_gap, self_consistency

FAST = dict(encoder_layers=(16,), max_iter=5, batch_size=32, n_importance_samples=16)


def ppca_data(n_samples, n_features=8, n_components=2, noise=0.1, seed=0):
    """Rows of a probabilistic-PCA model x = W z + mu + N(0, noise I)."""
    rng = np.random.default_rng(seed)
    W = rng.normal(size=(n_components, n_features))
    mu = rng.normal(size=n_features)
    Z = rng.normal(size=(n_samples, n_components))
    return Z @ W + mu + np.sqrt(noise) * rng.normal(size=(n_samples, n_features))


@pytest.fixture(scope="module")
def digits():
    return load_digits().data[:400] / 16


@pytest.fixture(scope="module")
def fitted(digits):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        return VAETransformer(random_state=0, **FAST).fit(digits)


def test_linear_vae_matches_pca_log_likelihood():
    X = ppca_data(4000)
    X_train, X_test = X[:3000], X[3000:]
    vae = VAETransformer(
        n_components=2,
        encoder_layers=(),
        decoder_layers=(),
        max_iter=150,
        batch_size=128,
        learning_rate_init=1e-2,
        n_importance_samples=100,
        random_state=0,
    ).fit(X_train)
    pca_score = PCA(n_components=2).fit(X_train).score(X_test)
    assert abs(vae.score(X_test) - pca_score) < 0.1


def test_density_integrates_to_one_in_2d():
    # exp(IWAE) is unbiased for p(x) only on average over the draws; with one
    # fixed set, heavy-tailed weights need K in the thousands for a 5% check
    # (measured: mass 1.061 at K=200, 1.006 at K=1000, 0.994 at K=3000).
    rng = np.random.default_rng(0)
    angle = rng.uniform(0, 2 * np.pi, 2000)
    X = np.c_[np.cos(angle), np.sin(angle)] + 0.15 * rng.normal(size=(2000, 2))
    vae = VAETransformer(
        n_components=1,
        encoder_layers=(32, 32),
        max_iter=150,
        learning_rate_init=3e-3,
        n_importance_samples=1000,
        random_state=0,
    ).fit(X)
    edges = np.linspace(-2.5, 2.5, 201)
    centres = (edges[:-1] + edges[1:]) / 2
    grid = np.stack(np.meshgrid(centres, centres), -1).reshape(-1, 2)
    mass = np.exp(vae.score_samples(grid)).sum() * (edges[1] - edges[0]) ** 2
    assert mass == pytest.approx(1.0, abs=0.05)


def test_defaults_beat_one_gaussian_with_as_many_latents_as_features():
    # PCA leaves no residual variance here, so the learned decoder variance
    # starts at its floor; from a floor of 1e-3 the fit settled at -2.67
    # nats/row, 0.05 above one Gaussian.
    X, _ = make_moons(1500, noise=0.05, random_state=0)
    X = StandardScaler().fit_transform(X)
    X_train, X_test = X[:1000], X[1000:]
    vae = VAETransformer(n_components=2, random_state=0).fit(X_train)
    gaussian = EmpiricalCovariance().fit(X_train).score(X_test)
    assert vae.score(X_test) > gaussian + 0.3


def test_pipeline_grid_search_same_with_one_and_two_jobs(digits):
    y = load_digits().target[:400]
    pipe = make_pipeline(
        StandardScaler(),
        VAETransformer(n_components=4, max_iter=10, batch_size=64, random_state=0),
        LogisticRegression(max_iter=200),
    )
    grid = {"vaetransformer__encoder_layers": [(4,), (64,)]}
    results = []
    for n_jobs in (1, 2):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ConvergenceWarning)
            search = GridSearchCV(pipe, grid, cv=2, n_jobs=n_jobs).fit(digits, y)
        results.append(search)
    assert results[0].best_params_ == results[1].best_params_
    np.testing.assert_allclose(
        results[0].cv_results_["mean_test_score"],
        results[1].cv_results_["mean_test_score"],
    )


def test_unsupervised_grid_search_selects_latent_size_by_score():
    X = ppca_data(1200, n_components=3, noise=0.05, seed=1)
    vae = VAETransformer(
        encoder_layers=(),
        decoder_layers=(),
        max_iter=40,
        learning_rate_init=1e-2,
        n_importance_samples=20,
        random_state=0,
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        search = GridSearchCV(vae, {"n_components": [1, 3]}, cv=2).fit(X)
    assert search.best_params_ == {"n_components": 3}


def test_same_random_state_same_outputs(digits, fitted):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        again = VAETransformer(random_state=0, **FAST).fit(digits)
    for method in ("transform", "score_samples"):
        np.testing.assert_array_equal(
            getattr(fitted, method)(digits), getattr(again, method)(digits)
        )
    np.testing.assert_array_equal(fitted.sample(5), again.sample(5))
    np.testing.assert_array_equal(
        fitted.sample(5, random_state=3), again.sample(5, random_state=3)
    )
    assert not np.array_equal(fitted.sample(5, random_state=3), fitted.sample(5))


def test_global_torch_random_state_is_left_alone(digits):
    torch.manual_seed(123)
    state = torch.get_rng_state()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        vae = VAETransformer(random_state=0, **FAST).fit(digits)
    vae.score_samples(digits)
    vae.sample(3)
    assert torch.equal(state, torch.get_rng_state())


def test_pickle_round_trip_keeps_outputs(digits, fitted):
    restored = pickle.loads(pickle.dumps(fitted))
    for method in ("transform", "score_samples"):
        np.testing.assert_array_equal(
            getattr(fitted, method)(digits), getattr(restored, method)(digits)
        )
    np.testing.assert_array_equal(fitted.sample(4), restored.sample(4))


def test_set_output_pandas(digits, fitted):
    pd = pytest.importorskip("pandas")
    frame = fitted.set_output(transform="pandas").transform(digits[:3])
    fitted.set_output(transform="default")
    assert isinstance(frame, pd.DataFrame)
    assert list(frame.columns) == ["vaetransformer0", "vaetransformer1"]


def test_float32_in_float32_out(digits, fitted):
    X32 = digits.astype(np.float32)
    assert fitted.transform(X32).dtype == np.float32
    assert fitted.inverse_transform(fitted.transform(X32)).dtype == np.float32
    np.testing.assert_allclose(
        fitted.transform(X32), fitted.transform(digits), atol=1e-5
    )


def test_sparse_input_equals_dense(digits, fitted):
    np.testing.assert_allclose(
        fitted.score_samples(sp.csr_matrix(digits)), fitted.score_samples(digits)
    )


def test_inverse_transform_reconstructs_better_than_the_mean(digits):
    # A fixed decoder variance: a learned one starts with every latent
    # collapsed and needs far more epochs before it reconstructs.
    vae = VAETransformer(
        n_components=8,
        encoder_layers=(64,),
        decoder_variance=0.05,
        max_iter=40,
        batch_size=32,
        random_state=0,
    ).fit(digits)
    X_hat = vae.inverse_transform(vae.transform(digits))
    assert X_hat.shape == digits.shape
    mse = np.mean((X_hat - digits) ** 2)
    assert mse < 0.5 * np.mean((digits - digits.mean(0)) ** 2)


@pytest.mark.parametrize(
    ("X", "message"),
    [
        (np.array([[0.0, np.nan], [1.0, 2.0]]), "NaN"),
        (np.array([[0.0, np.inf], [1.0, 2.0]]), "infinity"),
        (np.empty((0, 3)), "0 sample"),
        (np.ones((1, 3)), "1 sample"),
        (np.array([["a", "b"], ["c", "d"]]), "could not convert"),
        (np.ones(5), "Expected 2D array"),
        (np.ones((3, 2)) + 1j, "Complex data not supported"),
    ],
)
def test_bad_training_input_is_a_clear_value_error(X, message):
    with pytest.raises(ValueError, match=message):
        VAETransformer(**FAST).fit(X)


def test_bad_prediction_input_is_a_clear_value_error(digits, fitted):
    with pytest.raises(ValueError, match="X has 3 features"):
        fitted.transform(np.ones((2, 3)))
    with pytest.raises(ValueError, match="n_components=2"):
        fitted.inverse_transform(np.ones((2, 3)))
    with pytest.raises(ValueError, match="NaN"):
        fitted.score_samples(np.full((2, 64), np.nan))
    with pytest.raises(ValueError, match="non-finite values"):
        fitted.score_samples(np.full((2, 64), 1e300))
    with pytest.raises(NotFittedError):
        VAETransformer().transform(digits)


def test_divergence_stops_fit_with_the_epoch_and_a_remedy(digits):
    vae = VAETransformer(random_state=0, **FAST)
    with pytest.raises(RuntimeError, match=r"epoch 1\b.*learning_rate_init"):
        vae.fit(digits * 1e20)
    assert not hasattr(vae, "module_")


def test_heteroscedastic_codes_beat_pca_on_images_with_exact_zeros():
    # Most pixels of the raw digits are exactly 0. With a per-code variance
    # allowed down to 1e-6 of the data's variance, training spent the 2-D code
    # on which pixels are exactly 0 and the embedding fell below PCA's
    # (5-NN accuracy 0.560 against 0.633 on all the digits).
    X, y = load_digits(return_X_y=True)
    codes = VAETransformer(
        2, decoder_variance="heteroscedastic", random_state=0
    ).fit_transform(X)
    folds = StratifiedKFold(5, shuffle=True, random_state=0)

    def accuracy(codes):
        return cross_val_score(KNeighborsClassifier(5), codes, y, cv=folds).mean()

    assert accuracy(codes) > accuracy(PCA(2).fit_transform(X)) + 0.05


def test_heteroscedastic_decoder_models_noise_that_varies_with_the_code():
    # The second feature is nearly exact for z < 0 and noisy for z > 0: one
    # variance per feature must cover both regions, one per code need not.
    rng = np.random.default_rng(0)
    z = rng.normal(size=2000)
    noise = np.where(z < 0, 0.02, 0.5)
    X = np.c_[
        z + 0.05 * rng.normal(size=2000), np.tanh(z) + noise * rng.normal(size=2000)
    ]
    scores = {}
    for variance in ("learned", "heteroscedastic"):
        vae = VAETransformer(
            1,
            encoder_layers=(32, 32),
            decoder_variance=variance,
            max_iter=100,
            learning_rate_init=3e-3,
            random_state=0,
        )
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ConvergenceWarning)
            vae.fit(X[:1500])
        scores[variance] = vae.score(X[1500:])
    # Measured: -1.77 (learned) and -1.14 (heteroscedastic).
    assert scores["heteroscedastic"] > scores["learned"] + 0.3
    consistency = self_consistency(vae, X[:20], n_samples=10, random_state=0)
    assert np.all(
        (consistency.optimal_variance > 0) & (consistency.optimal_variance < 1)
    )


def test_non_gaussian_prior_fits_samples_and_limits_the_diagnostics(digits):
    vae = VAETransformer(prior_shape=8.0, random_state=0, **FAST)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        vae.fit(digits)
    assert np.all(np.isfinite(vae.score_samples(digits[:10])))
    samples = vae.sample(500)
    assert np.all(np.isfinite(samples))
    consistency = self_consistency(vae, digits[:10], n_samples=20, random_state=0)
    assert consistency.optimal_variance is None
    assert consistency.latent_error.shape == (20,)
    with pytest.raises(ValueError, match="prior_shape=8"):
        amortization_gap(vae, digits[:5])


def test_bernoulli_likelihood(digits):
    binary = (digits > 0.5).astype(float)
    vae = VAETransformer(likelihood="bernoulli", random_state=0, **FAST)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        vae.fit(binary)
    log_p = vae.score_samples(binary)
    assert np.all(log_p <= 0)
    assert set(np.unique(vae.sample(10))) <= {0.0, 1.0}
    with pytest.raises(ValueError, match=r"needs data in \[0, 1\]"):
        vae.fit(digits * 2)


def test_warm_start_continues_training(digits):
    vae = VAETransformer(warm_start=True, random_state=0, **FAST)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        vae.fit(digits)
        first = list(vae.loss_curve_)
        vae.fit(digits)
    assert vae.n_iter_ == 10
    assert vae.loss_curve_[:5] == first
    assert vae.loss_curve_[-1] < first[-1]


def test_early_stopping_keeps_validation_curve_and_converges(digits):
    vae = VAETransformer(
        early_stopping=True,
        n_iter_no_change=2,
        tol=10.0,
        random_state=0,
        **{**FAST, "max_iter": 200},
    )
    with warnings.catch_warnings():
        warnings.simplefilter("error", ConvergenceWarning)
        vae.fit(digits)
    assert 3 <= vae.n_iter_ < 200
    assert len(vae.validation_loss_curve_) == vae.n_iter_


def test_convergence_warning_when_max_iter_is_reached(digits):
    with pytest.warns(ConvergenceWarning, match="max_iter=5"):
        VAETransformer(random_state=0, **FAST).fit(digits)


def test_extra_skorch_callbacks_are_used_not_changed(digits):
    scheduler = LRScheduler(
        policy="StepLR", step_size=1, gamma=0.5, event_name="event_lr"
    )
    vae = VAETransformer(
        callbacks=[scheduler],
        learning_rate="constant",
        learning_rate_init=1e-3,
        random_state=0,
        **FAST,
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        vae.fit(digits)
    lrs = vae.history_[:, "event_lr"]
    assert lrs[0] == pytest.approx(1e-3) and lrs[-1] == pytest.approx(1e-3 / 16)
    assert not hasattr(scheduler, "lr_scheduler_")


def test_interrupted_fit_keeps_last_epoch_with_a_warning(digits):
    class Interrupt(Callback):
        def on_epoch_end(self, net, **kwargs):
            if len(net.history) == 3:
                raise KeyboardInterrupt

    vae = VAETransformer(callbacks=[Interrupt()], random_state=0, **FAST)
    with pytest.warns(UserWarning, match="interrupted after 3 of 5 epochs"):
        vae.fit(digits)
    assert vae.n_iter_ == 3
    assert np.isfinite(vae.score_samples(digits)).all()


def test_verbose_shows_a_progress_bar(digits, capsys):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        VAETransformer(verbose=1, random_state=0, **FAST).fit(digits)
    err = capsys.readouterr().err
    assert "5/5" in err and "train_loss" in err


def test_bad_layer_widths():
    with pytest.raises(ValueError, match="encoder_layers must hold positive"):
        VAETransformer(encoder_layers=(8, 0)).fit(np.ones((4, 2)))


def test_generative_parameters_as_factor_analysis(digits):
    X = ppca_data(200)
    quiet = dict(encoder_layers=(8,), max_iter=2, random_state=0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        learned = VAETransformer(decoder_variance="learned", **quiet).fit(X)
        fixed = VAETransformer(decoder_variance=0.3, **quiet).fit(X)
        chunked = VAETransformer(decoder_variance=0.3, **quiet)
        for chunk in np.array_split(X, 3):
            chunked.partial_fit(chunk)
    for vae in (learned, fixed, chunked):
        np.testing.assert_allclose(vae.mean_, X.mean(0), rtol=1e-12)
        assert vae.mean_.shape == vae.noise_variance_.shape == (8,)
    np.testing.assert_allclose(chunked.var_, X.var(0), rtol=1e-12)
    np.testing.assert_allclose(fixed.noise_variance_, 0.3, rtol=1e-12)
    # The variance the density uses: log p(x|z) of the float64 model.
    module = pickle.loads(pickle.dumps(learned.module_)).double()
    np.testing.assert_allclose(
        learned.noise_variance_,
        torch.exp(module.decoder_log_var).detach().numpy(),
        rtol=1e-12,
    )
    assert np.ptp(learned.noise_variance_) > 0
    # No single variance per feature: no attribute, none left from before.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        learned.set_params(decoder_variance="heteroscedastic").fit(X)
        bernoulli = VAETransformer(likelihood="bernoulli", **quiet).fit(digits)
    assert not hasattr(learned, "noise_variance_")
    assert not hasattr(bernoulli, "noise_variance_")
    np.testing.assert_allclose(learned.mean_, X.mean(0), rtol=1e-12)
