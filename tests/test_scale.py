"""Out-of-core training, devices, bounded-memory inference and awkward data."""

import tracemalloc
import warnings

import numpy as np
import pandas as pd
import pytest
import torch
from sklearn.base import clone
from sklearn.decomposition import PCA
from sklearn.exceptions import ConvergenceWarning

from skvae import INNAutoencoder, IsometricVAE, VAETransformer
from skvae.nn import GaussianVAE

ESTIMATORS = [
    VAETransformer(2, encoder_layers=(8,), max_iter=3, random_state=0),
    INNAutoencoder(2, n_blocks=2, subnet_layers=(8,), max_iter=3, random_state=0),
    IsometricVAE(2, encoder_layers=(8,), max_iter=3, random_state=0),
]
ids = [type(est).__name__ for est in ESTIMATORS]


def ppca_rows(n_samples, seed=0):
    rng = np.random.default_rng(seed)
    W = rng.normal(size=(2, 8))
    return rng.normal(size=(n_samples, 2)) @ W + 0.3 * rng.normal(size=(n_samples, 8))


def test_partial_fit_on_memmap_chunks_reaches_the_score_of_fit(tmp_path):
    X = ppca_rows(3000)
    X_train, X_test = X[:2400], X[2400:]
    stored = np.lib.format.open_memmap(
        tmp_path / "rows.npy", mode="w+", dtype=np.float32, shape=X_train.shape
    )
    stored[:] = X_train
    stored.flush()
    rows = np.load(tmp_path / "rows.npy", mmap_mode="r")
    # One noise variance per feature, as in the data's model: the per-code
    # variance of the default learns more slowly at partial_fit's constant
    # rate (-5.95 chunked).
    small = dict(encoder_layers=(16,), decoder_variance="learned", random_state=0)

    full = VAETransformer(2, **small).fit(X_train)
    chunked = VAETransformer(2, **small)
    for _ in range(25):
        for start in range(0, len(rows), 800):
            chunked.partial_fit(rows[start : start + 800], epochs=2)

    assert chunked.n_iter_ == 25 * 3 * 2
    exact = PCA(2).fit(X_train).score(X_test)
    # Measured: -5.91 chunked (at the constant rate of partial_fit), -5.88
    # fit, -5.84 exact (PCA).
    assert full.score(X_test) == pytest.approx(exact, abs=0.05)
    assert chunked.score(X_test) == pytest.approx(exact, abs=0.1)


def test_partial_fit_keeps_the_optimiser_state():
    X = ppca_rows(400)
    est = VAETransformer(2, encoder_layers=(8,), batch_size=100, random_state=0)
    est.partial_fit(X[:200])
    est.partial_fit(X[200:], epochs=3)
    # Every call drives a new skorch net, which takes over Adam's moments and
    # step counts.
    optimizer = est.net_.optimizer_
    steps = {state["step"].item() for state in optimizer.state.values()}
    assert steps == {2 + 3 * 2}
    with pytest.raises(ValueError, match="X has 3 features"):
        est.partial_fit(X[:, :3])


@pytest.mark.parametrize("est", ESTIMATORS, ids=ids)
def test_partial_fit_after_fit_with_early_stopping_continues(est):
    X = ppca_rows(300)
    est = est.set_params(early_stopping=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        est.fit(X)
    est.partial_fit(X[:100], epochs=2)
    assert est.n_iter_ == 5 or est.n_iter_ == len(est.loss_curve_)
    assert est.validation_loss_curve_ is None
    assert np.isfinite(est.score(X))


@pytest.mark.parametrize("est", ESTIMATORS, ids=ids)
@pytest.mark.parametrize("budget", [1, 8 * 64], ids=["one-row", "few-rows"])
def test_chunked_inference_equals_one_pass(est, budget):
    X = ppca_rows(500)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        est.fit(X)
    Z = est.transform(X)
    one_pass = Z, est.score_samples(X), est.inverse_transform(Z)
    est._inference_budget = budget
    try:
        chunked = est.transform(X), est.score_samples(X), est.inverse_transform(Z)
    finally:
        del est._inference_budget
    # BLAS sums the rows left over from its blocks of rows in another order,
    # so a row's float64 result moves with its chunk by a few units in the
    # last place of its column's scale (docs/developers.rst).
    for a, b in zip(one_pass, chunked, strict=True):
        scale = np.abs(a).max(axis=0)
        np.testing.assert_allclose(b / scale, a / scale, rtol=0, atol=1e-13)


def test_importance_samples_beyond_the_budget_are_drawn_in_passes(monkeypatch):
    X = ppca_rows(20)
    est = VAETransformer(
        2, encoder_layers=(8,), n_importance_samples=1000, max_iter=2, random_state=0
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        est.fit(X)
    draws = []
    importance_log_weights = GaussianVAE.importance_log_weights

    def spy(module, x, generator, n_samples, proposal=None):
        draws.append((len(x), n_samples))
        return importance_log_weights(module, x, generator, n_samples, proposal)

    monkeypatch.setattr(GaussianVAE, "importance_log_weights", spy)
    one_pass = est.score_samples(X)
    # After the probes that measure the cost: every row, every draw at once.
    assert draws[-1] == (20, 1000)
    draws.clear()
    # 160 floats hold 10 draws of the decoder's 16 outputs: one row at a time,
    # 8 draws at a time (whole blocks of 16 normal numbers).
    monkeypatch.setattr(est, "_inference_budget", 160, raising=False)
    in_passes = est.score_samples(X)
    assert draws[-20 * 125 :] == [(1, 8)] * (20 * 125)
    assert max(n for _, n in draws[-20 * 125 :]) == 8
    np.testing.assert_allclose(in_passes, one_pass, rtol=1e-12, atol=0)


def test_device_auto_picks_what_exists():
    X = ppca_rows(100)
    est = VAETransformer(2, encoder_layers=(8,), max_iter=1, device="auto")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        est.fit(X)
    expected = "cuda" if torch.cuda.is_available() else "cpu"
    assert next(est.module_.parameters()).device.type == expected


def test_same_seed_gives_the_same_draws_on_cpu_and_cuda_devices():
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA device")
    X = ppca_rows(200)
    fits = [
        VAETransformer(2, encoder_layers=(8,), max_iter=2, device=d, random_state=0)
        for d in ("cpu", "cuda")
    ]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        for est in fits:
            est.fit(X)
    np.testing.assert_allclose(fits[0].transform(X), fits[1].transform(X), atol=1e-4)


@pytest.mark.parametrize("est", ESTIMATORS, ids=ids)
@pytest.mark.parametrize(
    "make",
    [
        pytest.param(lambda X: np.c_[X, np.full(len(X), 3.0)], id="constant-column"),
        pytest.param(lambda X: np.r_[X, X], id="duplicated-rows"),
        pytest.param(lambda X: X * 1e4, id="huge-scale"),
        pytest.param(lambda X: X * 1e-4, id="tiny-scale"),
    ],
)
def test_awkward_data_works_or_fails_clearly(est, make):
    X = make(ppca_rows(200))
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ConvergenceWarning)
            est.fit(X)
    except RuntimeError as exc:
        # Divergence is the only acceptable failure, and it names a remedy.
        assert "scale the data" in str(exc)
        return
    for out in (est.transform(X), est.score_samples(X), est.sample(3)):
        assert np.all(np.isfinite(out))


@pytest.mark.parametrize("est", ESTIMATORS, ids=ids)
def test_code_longer_than_the_rows_is_a_clear_error(est):
    est = clone(est).set_params(n_components=4)
    with pytest.raises(ValueError, match="n_components=4 must be at most n_features=3"):
        est.fit(ppca_rows(20)[:, :3])
    with pytest.raises(ValueError, match="n_components=4 must be at most n_features=3"):
        est.partial_fit(ppca_rows(20)[:, :3])


def _reordered_frame_values(X):
    frame = pd.DataFrame(X, columns=[f"x{i}" for i in range(X.shape[1])])
    return frame[frame.columns[::-1]].values


@pytest.mark.parametrize("est", ESTIMATORS, ids=ids)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize(
    "view",
    [
        pytest.param(lambda X: X[::-1], id="reversed-rows"),
        pytest.param(np.flip, id="flipped"),
        pytest.param(_reordered_frame_values, id="reordered-frame-values"),
    ],
)
def test_negative_strides_give_the_results_of_a_contiguous_copy(est, dtype, view):
    X = view(ppca_rows(200).astype(dtype))
    assert any(stride < 0 for stride in X.strides)
    X_copy = np.ascontiguousarray(X)
    fits = [clone(est), clone(est)]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        fits[0].fit(X)
        fits[1].fit(X_copy)
        fits[0].partial_fit(X)
        fits[1].partial_fit(X_copy)
    on_view, on_copy = fits
    Z = on_copy.transform(X_copy)
    np.testing.assert_array_equal(on_view.transform(X), Z)
    np.testing.assert_array_equal(
        on_view.score_samples(X), on_copy.score_samples(X_copy)
    )
    np.testing.assert_array_equal(
        on_view.inverse_transform(Z[::-1]), on_copy.inverse_transform(Z[::-1].copy())
    )


@pytest.mark.parametrize("est", ESTIMATORS, ids=ids)
def test_chunk_outputs_go_straight_into_the_result(est):
    # Kept chunk outputs joined at the end fragment the heap and double the
    # output's memory: NumPy's allocations, which tracemalloc counts exactly,
    # must peak near the size of the result alone.
    est = clone(est)
    X = ppca_rows(20_000).astype(np.float32)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        est.fit(X[:500])
    if "n_importance_samples" in est.get_params():
        est.set_params(n_importance_samples=2)
    # A budget small enough for dozens of chunks, whatever the network.
    est._inference_budget = 2**15
    for method in (est.transform, est.score_samples):
        tracemalloc.start()
        try:
            out = method(X)
            peak = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
        assert peak < 1.5 * out.nbytes


def test_inn_inference_chunks_rows_by_the_networks_cost():
    est = clone(ESTIMATORS[1])
    X = ppca_rows(600)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        est.fit(X)
    est._inference_budget = 2**12
    chunk_rows = []
    hook = est.module_.net.couplings[0].subnet1.register_forward_hook(
        lambda module, args, output: chunk_rows.append(len(args[0]))
    )
    try:
        for method, data in [
            (est.score_samples, X),
            (est.transform, X),
            (est.inverse_transform, np.zeros((600, 2))),
        ]:
            chunk_rows.clear()
            method(data)
            # The first call measures the cost on two probe rows.
            assert chunk_rows[0] == 2
            assert sum(chunk_rows[1:]) == 600
            # Sized by the width of the data alone, a chunk would hold
            # 2**12 / 8 = 512 rows; the coupling networks make more floats.
            assert max(chunk_rows[1:]) < 512 / 4
    finally:
        hook.remove()
