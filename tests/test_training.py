"""The training engine: batches as tensor slices, seeded, complete."""

import torch
from skorch.dataset import Dataset

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
