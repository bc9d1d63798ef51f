"""The training engine as users meet it: the learning-rate schedule, when a fit
has converged, early stopping, collapse reports, and resumed runs."""

import warnings

import numpy as np
import pytest
import torch
from sklearn.decomposition import PCA
from sklearn.exceptions import ConvergenceWarning
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from skorch.callbacks import Callback

import skvae
from skvae import INNAutoencoder, IsometricVAE, VAETransformer
from skvae.datasets import load_digits_dequantized
from skvae.exceptions import PosteriorCollapseWarning

SMALL = dict(encoder_layers=(16,), batch_size=64, random_state=0)


def ppca_data(n_samples, n_features=8, n_components=2, noise=0.1, seed=0):
    """Rows of a probabilistic-PCA model x = W z + mu + N(0, noise I)."""
    rng = np.random.default_rng(seed)
    W = rng.normal(size=(n_components, n_features))
    mu = rng.normal(size=n_features)
    Z = rng.normal(size=(n_samples, n_components))
    return Z @ W + mu + np.sqrt(noise) * rng.normal(size=(n_samples, n_features))


class RecordRates(Callback):
    """Records the optimiser's learning rate in every epoch."""

    def on_epoch_end(self, net, **kwargs):
        net.history.record("rate", net.optimizer_.param_groups[0]["lr"])


def rates(est):
    return np.array(est.history_[:, "rate"])


@pytest.fixture(scope="module")
def digits():
    # Dequantized: a continuous density, whose held-out likelihood cannot
    # keep rising by piling mass onto the integer pixel values.
    return load_digits_dequantized().data[:300]


# -- the schedule ------------------------------------------------------------------


def test_default_vae_reaches_the_exact_optimum_of_linear_gaussian_data():
    # Measured: 0.033 nats per row below PCA's exact log-likelihood; 0.072
    # below with the constant rate and stopping rule this replaced.
    X = ppca_data(4000)
    X_train, X_test = X[:3000], X[3000:]
    vae = VAETransformer(2, random_state=0).fit(X_train)
    exact = PCA(2).fit(X_train).score(X_test)
    assert vae.score(X_test) == pytest.approx(exact, abs=0.05)


def test_adaptive_rate_is_divided_at_plateaus_until_the_fit_converges(digits):
    vae = VAETransformer(2, callbacks=[RecordRates()], **SMALL)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        vae.fit(digits)
    curve = rates(vae)
    assert len(curve) < vae.max_iter
    initial = vae.learning_rate_init
    # Constant, then divided by 5 at each of two plateaus; at the third the
    # rate would fall below 1 % of its initial value: converged.
    assert np.all(np.diff(curve) <= 0)
    np.testing.assert_allclose(np.unique(curve), initial / 5.0 ** np.arange(3)[::-1])
    assert curve[0] == initial


def test_constant_schedule_keeps_the_initial_rate(digits):
    vae = VAETransformer(
        2,
        learning_rate="constant",
        learning_rate_init=3e-3,
        max_iter=12,
        callbacks=[RecordRates()],
        **SMALL,
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        vae.fit(digits)
    assert np.all(rates(vae) == 3e-3)


def test_a_fit_that_runs_out_of_epochs_warns_at_the_callers_line(digits):
    vae = VAETransformer(2, max_iter=4, **SMALL)
    with pytest.warns(ConvergenceWarning, match="max_iter=4") as record:
        make_pipeline(StandardScaler(), vae).fit_transform(digits)
    # The warning points here, not into scikit-learn's or skvae's code.
    assert [w.filename for w in record] == [__file__]
    assert vae.n_iter_ == 4


def test_a_converged_fit_does_not_warn(digits):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        INNAutoencoder(2, n_blocks=2, subnet_layers=(16,), random_state=0).fit(digits)
        IsometricVAE(2, **SMALL).fit(digits)


# -- early stopping --------------------------------------------------------------


def test_early_stopping_keeps_the_weights_of_the_best_validation_epoch(digits):
    vae = VAETransformer(2, early_stopping=True, **SMALL).fit(digits)
    curve = vae.validation_loss_curve_
    assert int(np.argmin(curve)) < len(curve) - 1
    # Another validation pass, with the same noise, on the final weights.
    net = vae.net_
    rows = net.train_split.keywords["valid_ds"]
    net.validation_generator.manual_seed(net.validation_seed)
    losses, sizes = [], []
    for x, _ in net.get_iterator(rows, training=False):
        losses.append(net.validation_step((x, None))["loss"].item())
        sizes.append(len(x))
    assert np.average(losses, weights=sizes) == pytest.approx(min(curve), rel=1e-5)


def test_validation_loss_uses_the_same_noise_every_epoch(digits):
    vae = VAETransformer(2, max_iter=3, learning_rate_init=1e-12, **SMALL)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        vae.fit(digits)
    # With weights that do not move, a validation loss with fresh noise
    # would differ from epoch to epoch; with fixed noise it repeats.
    curve = np.array(vae.validation_loss_curve_)
    np.testing.assert_allclose(curve, curve[0], rtol=1e-6)


def test_early_stopping_does_not_stop_on_noise():
    # The validation loss is a Monte Carlo estimate: with fresh noise every
    # epoch its plateaus come early, and early stopping used to end a fit
    # 7.5 nats below the same fit without it. Measured now, on 1,200 rows of
    # the dequantized digits: 54.3 nats held out with early stopping, 22.3
    # without (which overfits: 88.6 on its training rows).
    X = load_digits_dequantized().data
    scores = [
        VAETransformer(5, early_stopping=early, max_iter=200, random_state=0)
        .fit(X[:1200])
        .score(X[1200:])
        for early in (True, False)
    ]
    assert scores[0] > scores[1] - 0.5


# -- collapse ----------------------------------------------------------------------


def _directions_of_variance_9(n_directions, n_rows=400, n_features=6):
    """Rows with ``n_directions`` orthogonal directions of variance 9 among
    noise of variance 0.01: under a fixed decoder variance of 1, only those
    directions are worth a latent."""
    rng = np.random.default_rng(0)
    loadings = np.linalg.qr(rng.normal(size=(n_features, n_directions)))[0].T
    X = 3 * rng.normal(size=(n_rows, n_directions)) @ loadings
    return X + 0.1 * rng.normal(size=X.shape)


def test_active_latents_are_measured_and_collapse_warns():
    # One direction worth a latent, so three of four collapse onto the prior.
    vae = VAETransformer(4, decoder_variance=1.0, **SMALL)
    with pytest.warns(PosteriorCollapseWarning, match="3 of 4 latents") as record:
        vae.fit(_directions_of_variance_9(1))
    assert [w.filename for w in record] == [__file__]
    assert vae.collapsed_.sum() == 3
    assert np.sort(vae.latent_activity_)[-1] > 0.5
    assert np.all(vae.latent_activity_[vae.collapsed_] < 0.01)


@pytest.mark.parametrize(
    "cls, noise",
    [(VAETransformer, dict(decoder_variance=1.0)), (IsometricVAE, dict(beta=1.0))],
)
def test_half_the_latents_collapsed_warns(cls, noise):
    # The defect first reported: a 2-D code that is really a 1-D curve.
    vae = cls(2, **noise, **SMALL)
    with pytest.warns(PosteriorCollapseWarning, match="1 of 2 latents") as record:
        vae.fit(_directions_of_variance_9(1))
    assert [w.filename for w in record] == [__file__]
    np.testing.assert_array_equal(np.sort(vae.collapsed_), [False, True])


def test_fewer_than_half_collapsed_do_not_warn():
    vae = VAETransformer(3, decoder_variance=1.0, **SMALL)
    with warnings.catch_warnings():
        warnings.simplefilter("error", PosteriorCollapseWarning)
        vae.fit(_directions_of_variance_9(2))
    assert vae.collapsed_.sum() == 1


def test_most_latents_active_on_structured_data_do_not_warn(digits):
    with warnings.catch_warnings():
        warnings.simplefilter("error", PosteriorCollapseWarning)
        vae = VAETransformer(2, **SMALL).fit(digits)
    assert not vae.collapsed_.any()


# -- resumed runs --------------------------------------------------------------------


def _fitted(cls, X, **params):
    est = cls(2, max_iter=5, **{**_small(cls), **params})
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        return est.fit(X)


def _small(cls):
    if cls is INNAutoencoder:
        return dict(n_blocks=2, subnet_layers=(8,), random_state=0)
    return dict(SMALL)


ALL = [VAETransformer, INNAutoencoder, IsometricVAE]


@pytest.mark.parametrize("cls", ALL, ids=lambda c: c.__name__)
def test_a_failed_run_leaves_the_model_as_it_was(cls, digits):
    est = _fitted(cls, digits)
    weights = {k: v.clone() for k, v in est.module_.state_dict().items()}
    optimiser = est.net_.optimizer_.state_dict()
    attributes = dict(vars(est))
    before = est.transform(digits)
    with pytest.raises(RuntimeError, match="diverged"):
        est.partial_fit(digits * 1e30)
    for key, value in est.module_.state_dict().items():
        torch.testing.assert_close(value, weights[key], rtol=0, atol=0)
    assert est.net_.optimizer_.state_dict()["state"].keys() == optimiser["state"].keys()
    assert vars(est).keys() == attributes.keys()
    assert est.n_iter_ == attributes["n_iter_"]
    np.testing.assert_array_equal(est.transform(digits), before)


def test_training_parameters_set_between_runs_take_effect(digits):
    vae = _fitted(VAETransformer, digits, learning_rate="constant")
    vae.set_params(
        warm_start=True,
        learning_rate_init=5e-4,
        batch_size=50,
        n_iter_no_change=1000,
        max_iter=7,
        callbacks=[RecordRates()],
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        vae.fit(digits)
    new_epochs = vae.history_[5:]
    assert len(new_epochs) == 7
    assert all(epoch["rate"] == 5e-4 for epoch in new_epochs)
    # 270 training rows in batches of 50.
    assert all(epoch["train_batch_count"] == 6 for epoch in new_epochs)
    assert vae.n_iter_ == 12


@pytest.mark.parametrize(
    "change",
    [dict(n_components=1), dict(encoder_layers=(4,)), dict(activation="relu")],
    ids=str,
)
def test_a_changed_network_on_resume_is_a_clear_error(change, digits):
    vae = _fitted(VAETransformer, digits)
    vae.set_params(warm_start=True, **change)
    with pytest.raises(ValueError, match=f"{next(iter(change))} changed"):
        vae.fit(digits)
    with pytest.raises(ValueError, match="changed since the model was fitted"):
        vae.partial_fit(digits)


def test_a_loaded_model_keeps_counting_its_epochs(digits, tmp_path):
    vae = _fitted(VAETransformer, digits)
    path = tmp_path / "vae.safetensors"
    skvae.save(vae, path)
    loaded = skvae.load(path)
    loaded.set_params(warm_start=True, max_iter=3)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        loaded.fit(digits)
    assert loaded.n_iter_ == 8
    assert loaded.loss_curve_[:5] == vae.loss_curve_
    assert len(loaded.loss_curve_) == 8
