"""FittedModule: a fitted model evaluated on NumPy rows in measured chunks."""

import warnings

import numpy as np
import pytest
import scipy.sparse as sp
import torch
from sklearn.exceptions import ConvergenceWarning, NotFittedError
from torch import nn

from skvae import VAETransformer
from skvae.diagnostics import ima_contrast
from skvae.inference import FittedModule


class Widening(nn.Module):
    """A decoder whose hidden width no layer attribute reveals: each row is
    repeated ``factor`` times before it is summed back."""

    def __init__(self, n_inputs, n_outputs, factor=500):
        super().__init__()
        self.linear = nn.Linear(n_inputs, n_outputs)
        self.factor = factor

    def forward(self, z):
        wide = torch.tanh(z.repeat(1, self.factor))
        return self.linear(wide.reshape(len(z), self.factor, -1).mean(1))


@pytest.fixture(scope="module")
def fitted_vae():
    X = np.random.default_rng(0).normal(size=(60, 5))
    vae = VAETransformer(
        2, encoder_layers=(8,), decoder=Widening, max_iter=2, random_state=0
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        return vae.fit(X), X


def test_float32_holds_the_module_float64_a_copy(fitted_vae):
    vae, _ = fitted_vae
    single = FittedModule(vae, np.float32)
    assert single.module is vae.module_
    double = FittedModule(vae)
    assert double.dtype == np.float64
    assert next(double.module.parameters()).dtype == torch.float64
    assert next(vae.module_.parameters()).dtype == torch.float32
    assert double.device == torch.device("cpu")
    with pytest.raises(ValueError, match="float32 or float64"):
        FittedModule(vae, np.int64)
    with pytest.raises(NotFittedError):
        FittedModule(VAETransformer())


def test_chunks_are_sized_by_the_measured_cost(fitted_vae):
    vae, X = fitted_vae
    fitted = FittedModule(vae)

    def decode(module, z):
        return module.decode(z)

    Z = vae.transform(X)
    # The repeated rows count: 500 copies of 2 latents, and more.
    assert fitted.floats_per_row(decode, Z) > 1000
    assert fitted.floats_per_row(decode, Z) < 10 * fitted.floats_per_row(
        lambda m, z: m.decode(z).repeat(1, 10), Z
    )
    fitted.budget = 10 * fitted.floats_per_row(decode, Z)
    assert fitted.rows_per_chunk(fitted.floats_per_row(decode, Z)) == 10
    calls = []

    def counted(module, z):
        calls.append(len(z))
        return module.decode(z)

    chunked = fitted.map_rows(counted, Z)
    assert calls[1:] == [10] * 6  # after the two probe rows
    np.testing.assert_allclose(chunked, vae.inverse_transform(Z), rtol=1e-12)


def test_map_rows_joins_tuples_and_casts(fitted_vae):
    vae, X = fitted_vae
    fitted = FittedModule(vae)
    fitted.budget = 1
    mean, log_var = fitted.map_rows(lambda m, x: m.posterior(x), sp.csr_matrix(X))
    # Chunks of one row round differently in the last bits (docs/developers).
    np.testing.assert_allclose(mean, vae.transform(X), rtol=0, atol=1e-13)
    assert log_var.shape == (60, 2) and log_var.dtype == np.float64
    single = fitted.map_rows(lambda m, x: m.encode(x), X, out_dtype=np.float32)
    assert single.dtype == np.float32
    mapped = fitted.map_chunks(lambda start, stop: torch.arange(start, stop), 7, 3)
    np.testing.assert_array_equal(mapped, np.arange(7.0))


def test_non_finite_outputs_name_the_first_row(fitted_vae):
    vae, X = fitted_vae
    fitted = FittedModule(vae)

    def poisoned(module, x):
        return torch.where(x[:, :1] > 10, torch.nan, x)

    X = X.copy()
    X[[4, 9]] = 100.0
    with pytest.raises(ValueError, match=r"2 row\(s\) \(first: row 4\)"):
        fitted.map_rows(poisoned, X)
    assert np.isnan(fitted.map_rows(poisoned, X, check_finite=False)[4]).all()


def test_diagnostics_chunk_a_network_they_cannot_read(fitted_vae):
    vae, X = fitted_vae
    full = ima_contrast(vae, X).local_contrast
    vae._inference_budget = 20_000  # a few rows of Jacobians a chunk
    try:
        np.testing.assert_allclose(ima_contrast(vae, X).local_contrast, full)
    finally:
        del vae._inference_budget
