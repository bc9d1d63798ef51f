"""Random inputs to every public method: finite output of the right shape, or
a ValueError. Never NaN, never another exception, never a hang."""

import warnings

import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays
from sklearn.exceptions import ConvergenceWarning

from skvae import INNAutoencoder, IsometricVAE, VAETransformer

N_FEATURES, N_COMPONENTS = 3, 2
# derandomize: the same examples on every run, so CI never flakes on a new one.
FUZZ = settings(
    max_examples=40,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)


def _make(cls, **params):
    small = {
        VAETransformer: dict(encoder_layers=(4,), n_importance_samples=4),
        INNAutoencoder: dict(n_blocks=1, subnet_layers=(4,)),
        IsometricVAE: dict(encoder_layers=(4,), n_importance_samples=4),
    }[cls]
    return cls(N_COMPONENTS, max_iter=1, random_state=0, **small, **params)


@pytest.fixture(scope="module", params=[VAETransformer, INNAutoencoder, IsometricVAE])
def fitted(request):
    X = np.random.default_rng(0).normal(size=(40, N_FEATURES))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        return _make(request.param).fit(X)


values = st.one_of(
    st.floats(allow_nan=True, allow_infinity=True, width=64),
    st.sampled_from([0.0, -0.0, 1e-300, -1e300, 1e300, 3e38, 1e5, np.nan, np.inf]),
)


@st.composite
def inputs(draw, n_columns=None):
    """Arrays, frames and sparse matrices of odd shapes, dtypes and values."""
    n_rows = draw(st.integers(0, 5))
    n_cols = draw(st.integers(0, 5)) if n_columns is None else n_columns
    if draw(st.booleans()):
        n_cols = draw(st.sampled_from([n_cols, N_FEATURES, N_COMPONENTS]))
    dtype = draw(st.sampled_from(["float64", "float32", "int64", "bool", "str"]))
    X = draw(arrays(np.float64, (n_rows, n_cols), elements=values))
    if dtype == "str":
        X = X.astype(str)
    elif dtype != "float64":
        with np.errstate(invalid="ignore", over="ignore"):
            X = np.nan_to_num(X).astype(dtype)
    kind = draw(st.sampled_from(["array", "frame", "sparse", "list", "1d"]))
    if kind == "frame":
        return pd.DataFrame(X)
    if kind == "sparse" and dtype in ("float64", "float32"):
        return sp.csr_matrix(np.nan_to_num(X))
    if kind == "list":
        return X.tolist()
    if kind == "1d":
        return X.ravel()
    return X


def _check(call, n_rows_expected=None, n_cols_expected=None):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        try:
            out = call()
        except ValueError:
            return
    out = np.asarray(out)
    assert np.all(np.isfinite(out))
    if n_rows_expected is not None:
        assert out.shape[0] == n_rows_expected
    if n_cols_expected is not None:
        assert out.shape[1] == n_cols_expected


def _rows(X):
    return np.shape(X)[0] if np.ndim(X) == 2 or sp.issparse(X) else None


@FUZZ
@given(X=inputs())
def test_transform(fitted, X):
    _check(lambda: fitted.transform(X), _rows(X), N_COMPONENTS)


@FUZZ
@given(X=inputs())
def test_score_samples_and_score(fitted, X):
    _check(lambda: fitted.score_samples(X), _rows(X))
    _check(lambda: fitted.score(X))


@FUZZ
@given(Z=inputs(n_columns=N_COMPONENTS))
def test_inverse_transform(fitted, Z):
    _check(lambda: fitted.inverse_transform(Z), _rows(Z), N_FEATURES)


@FUZZ
@given(n_samples=st.integers(-3, 50), seed=st.integers(0, 2**31 - 1))
def test_sample(fitted, n_samples, seed):
    _check(lambda: fitted.sample(n_samples, random_state=seed), n_samples, N_FEATURES)


@settings(FUZZ, max_examples=15)
@given(X=inputs())
def test_fit_and_partial_fit(fitted, X):
    est = _make(type(fitted))
    _check(lambda: est.fit(X).transform(X), _rows(X), N_COMPONENTS)
    est = _make(type(fitted))
    _check(lambda: est.partial_fit(X).score_samples(X), _rows(X))
