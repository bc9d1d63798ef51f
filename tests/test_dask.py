"""Hyper-parameter search on a Dask cluster through joblib's dask backend."""

import warnings

import numpy as np
import pytest
import torch
from joblib import parallel_backend
from sklearn.exceptions import ConvergenceWarning
from sklearn.model_selection import GridSearchCV

from skvae import VAETransformer

distributed = pytest.importorskip("distributed")


def _search(n_jobs):
    X = np.random.default_rng(0).normal(size=(200, 6))
    search = GridSearchCV(
        VAETransformer(2, max_iter=3, random_state=0),
        {"encoder_layers": [(4,), (16,)], "beta": [0.5, 1.0]},
        cv=2,
        n_jobs=n_jobs,
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        return search.fit(X)


def test_grid_search_on_a_local_dask_cluster_matches_one_job():
    with (
        distributed.LocalCluster(
            n_workers=2,
            threads_per_worker=1,
            processes=True,
            host="127.0.0.1",
            dashboard_address=None,
        ) as cluster,
        distributed.Client(cluster),
        parallel_backend("dask"),
    ):
        on_dask = _search(n_jobs=-1)
    # Dask's workers run one thread each; float32 sums split over more
    # threads round differently.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        local = _search(n_jobs=1)
    finally:
        torch.set_num_threads(threads)
    assert on_dask.best_params_ == local.best_params_
    np.testing.assert_allclose(
        on_dask.cv_results_["mean_test_score"],
        local.cv_results_["mean_test_score"],
        rtol=1e-12,
    )
