"""The training engine: batches as tensor slices, seeded, complete."""

import functools
import re
import warnings

import numpy as np
import pytest
import torch
from sklearn.exceptions import ConvergenceWarning
from skorch.dataset import Dataset
from tqdm import tqdm

from skvae import INNAutoencoder, IsometricVAE, VAETransformer, _training
from skvae._training import TensorBatchIterator


def _batches(n_rows, batch_size, shuffle, seed=0):
    X = torch.arange(n_rows, dtype=torch.float32)[:, None]
    generator = torch.Generator().manual_seed(seed)
    iterator = TensorBatchIterator(Dataset(X), batch_size, shuffle, generator)
    return iterator, [xb[:, 0].long().tolist() for xb, yb in iterator]


def test_each_epoch_visits_every_row_once_in_slices():
    iterator, batches = _batches(10, 4, shuffle=True)
    assert [len(b) for b in batches] == [4, 4, 2] and len(iterator) == 3
    assert sorted(row for batch in batches for row in batch) == list(range(10))


def test_shuffling_is_seeded_and_changes_between_epochs():
    iterator, first = _batches(50, 50, shuffle=True)
    second = [xb[:, 0].long().tolist() for xb, _ in iterator]
    assert first != second
    assert first == _batches(50, 50, shuffle=True)[1]
    assert first != _batches(50, 50, shuffle=True, seed=1)[1]


def test_validation_batches_keep_row_order():
    _, batches = _batches(7, 3, shuffle=False)
    assert batches == [[0, 1, 2], [3, 4, 5], [6]]


@pytest.mark.parametrize("Estimator", [VAETransformer, INNAutoencoder, IsometricVAE])
def test_training_on_the_cpu_uses_adams_fused_kernel(Estimator):
    X = np.random.default_rng(0).normal(size=(40, 3))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        est = Estimator(n_components=2, max_iter=2, random_state=0).fit(X)
    assert est.net_.optimizer_.defaults["fused"] is True


def test_fused_adam_takes_the_steps_of_torchs_default_adam():
    torch.manual_seed(0)
    start = torch.randn(5, 3, dtype=torch.float64)
    target = torch.randn(5, 3, dtype=torch.float64)
    trajectories = []
    for make in (_training.adam, torch.optim.Adam):
        weight = torch.nn.Parameter(start.clone())
        optimizer = make([{"params": [weight]}], lr=0.1)
        for _ in range(20):
            optimizer.zero_grad()
            (weight - target).square().sum().backward()
            optimizer.step()
        trajectories.append(weight.detach())
    assert optimizer.defaults["fused"] is None
    torch.testing.assert_close(trajectories[0], trajectories[1], rtol=1e-12, atol=1e-12)


def test_adam_keeps_torchs_default_for_parameters_the_fused_kernel_rejects():
    real = torch.nn.Parameter(torch.randn(3))
    complex_ = torch.nn.Parameter(torch.randn(3, dtype=torch.complex64))
    optimizer = _training.adam([{"params": [real, complex_]}], lr=0.1)
    assert optimizer.defaults["fused"] is None
    (real.sum() + complex_.abs().sum()).backward()
    optimizer.step()


def _bar_lines(est, X, monkeypatch, capsys):
    # mininterval=0: the bar draws on every update, whatever the timing.
    monkeypatch.setattr(_training, "tqdm", functools.partial(tqdm, mininterval=0))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        est.fit(X)
    err = capsys.readouterr().err
    return [line for line in re.split(r"[\r\n]", err) if line.strip()]


@pytest.mark.parametrize(
    "est",
    [
        VAETransformer(encoder_layers=(4,)),
        INNAutoencoder(n_blocks=1, subnet_layers=(4,)),
        IsometricVAE(encoder_layers=(4,)),
    ],
    ids=lambda est: type(est).__name__,
)
def test_progress_bar_names_the_estimator_and_draws_its_last_line_once(
    est, monkeypatch, capsys
):
    X = np.random.default_rng(0).normal(size=(40, 3))
    est.set_params(max_iter=4, verbose=1, random_state=0)
    lines = _bar_lines(est, X, monkeypatch, capsys)
    assert all(line.startswith(type(est).__name__ + ":") for line in lines)
    assert sum("4/4" in line for line in lines) == 1
    assert "train_loss" in lines[-1]


def test_progress_bar_counts_the_epoch_that_stops_training(monkeypatch, capsys):
    X = np.random.default_rng(0).normal(size=(40, 3))
    # tol is relative to the decrease since the first epoch: after the
    # second, no epoch improves by 1e9 times it, and training stops in epoch 3.
    est = VAETransformer(
        encoder_layers=(4,), max_iter=5, n_iter_no_change=1, learning_rate="constant"
    )
    est.set_params(tol=1e9, verbose=1, random_state=0)
    lines = _bar_lines(est, X, monkeypatch, capsys)
    assert est.n_iter_ == 3
    assert "3/5" in lines[-1] and sum("3/5" in line for line in lines) == 1
    assert f"train_loss={est.loss_curve_[-1]:.4g}" in lines[-1]
