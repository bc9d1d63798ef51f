"""Estimators with the networks a user brings: convolutional, or any class."""

import pickle
import warnings
from functools import partial

import numpy as np
import pytest
import torch
from sklearn.base import clone
from sklearn.datasets import load_digits
from sklearn.decomposition import PCA
from sklearn.exceptions import ConvergenceWarning
from sklearn.model_selection import GridSearchCV
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import MinMaxScaler
from torch import nn

from skvae import IsometricVAE, VAETransformer
from skvae.exceptions import PosteriorCollapseWarning
from skvae.nn import ConvDecoder, ConvEncoder

SMALL_CONV = dict(channels=(4, 8))


class PoolingEncoder(nn.Module):
    """Another image encoder: one convolution, average pooling, a linear map."""

    def __init__(self, n_inputs, n_outputs):
        super().__init__()
        self.side = int(np.sqrt(n_inputs))
        self.conv = nn.Conv2d(1, 4, 3, padding=1)
        self.linear = nn.Linear(4 * (self.side // 2) ** 2, n_outputs)

    def forward(self, x):
        images = x.reshape(-1, 1, self.side, self.side)
        pooled = nn.functional.avg_pool2d(torch.relu(self.conv(images)), 2)
        return self.linear(pooled.flatten(1))


class NotAModule:
    def __init__(self, n_inputs, n_outputs):
        self.shape = n_inputs, n_outputs


def quiet(fit, *args):
    with warnings.catch_warnings():
        # A few epochs: neither converged nor using every latent.
        warnings.simplefilter("ignore", ConvergenceWarning)
        warnings.simplefilter("ignore", PosteriorCollapseWarning)
        return fit(*args)


@pytest.fixture(scope="module")
def digits():
    X, y = load_digits(return_X_y=True)
    return X[:300], y[:300]


def conv_vae(**params):
    return VAETransformer(
        **{
            "n_components": 2,
            "encoder": partial(ConvEncoder, **SMALL_CONV),
            "decoder": partial(ConvDecoder, channels=(8, 4)),
            "max_iter": 3,
            "batch_size": 64,
            "n_importance_samples": 8,
            "random_state": 0,
            **params,
        }
    )


def test_conv_vae_in_a_pipeline_on_flat_rows(digits):
    X, _ = digits
    vae = conv_vae(decoder_variance="heteroscedastic")
    pipe = quiet(make_pipeline(MinMaxScaler(), vae).fit, X)
    assert isinstance(vae.module_.encoder, ConvEncoder)
    assert isinstance(vae.module_.decoder, ConvDecoder)
    # Heteroscedastic: two maps per pixel, means then log-variances.
    assert vae.module_.decoder(torch.zeros(1, 2)).shape == (1, 128)
    Z = pipe.transform(X)
    assert Z.shape == (300, 2) and Z.dtype == np.float64
    assert pipe.inverse_transform(Z).shape == X.shape
    assert np.isfinite(pipe.score_samples(X)).all()
    np.testing.assert_array_equal(pipe.transform(X.astype(np.float32)).shape, Z.shape)


def test_grid_search_over_two_encoder_classes_with_two_jobs(digits):
    X, _ = digits
    pipe = make_pipeline(MinMaxScaler(), conv_vae())
    grid = {"vaetransformer__encoder": [PoolingEncoder, ConvEncoder]}
    searches = [
        quiet(GridSearchCV(pipe, grid, cv=2, n_jobs=n_jobs).fit, X) for n_jobs in (1, 2)
    ]
    scores = [s.cv_results_["mean_test_score"] for s in searches]
    # The same seeded weights in the worker processes as here.
    np.testing.assert_allclose(scores[0], scores[1], rtol=1e-6)
    assert np.isfinite(scores[0]).all() and scores[0][0] != scores[0][1]
    best = searches[1].best_estimator_[-1]
    assert (
        type(best.module_.encoder)
        is searches[1].best_params_["vaetransformer__encoder"]
    )


def test_random_state_seeds_the_users_network_and_nothing_else(digits):
    X, _ = digits
    torch.manual_seed(123)
    before = torch.random.get_rng_state()
    first = quiet(conv_vae(encoder=PoolingEncoder).fit, X / 16)
    assert torch.equal(torch.random.get_rng_state(), before)
    second = quiet(conv_vae(encoder=PoolingEncoder).fit, X / 16)
    other = quiet(conv_vae(encoder=PoolingEncoder, random_state=1).fit, X / 16)
    np.testing.assert_array_equal(first.transform(X / 16), second.transform(X / 16))
    assert not np.array_equal(first.transform(X / 16), other.transform(X / 16))


@pytest.mark.parametrize("estimator", [VAETransformer, IsometricVAE])
def test_clone_and_pickle_keep_the_users_classes(estimator, digits):
    X, _ = digits
    vae = estimator(
        n_components=2,
        encoder=PoolingEncoder,
        decoder=partial(ConvDecoder, channels=(4,)),
        max_iter=2,
        random_state=0,
    )
    twin = clone(vae)
    assert twin.encoder is PoolingEncoder
    assert twin.decoder.func is ConvDecoder and twin.decoder.keywords == {
        "channels": (4,)
    }
    quiet(vae.fit, X / 16)
    again = pickle.loads(pickle.dumps(vae))
    np.testing.assert_array_equal(again.transform(X / 16), vae.transform(X / 16))
    np.testing.assert_array_equal(
        again.score_samples(X[:5] / 16), vae.score_samples(X[:5] / 16)
    )


def test_a_constructor_must_return_a_module():
    with pytest.raises(TypeError, match=r"not a torch\.nn\.Module"):
        VAETransformer(encoder=NotAModule).fit(np.ones((4, 3)))


def test_isometric_conv_vae_ranks_its_latents_like_pca(digits):
    X, _ = digits
    X = X / 16
    vae = IsometricVAE(
        n_components=3,
        encoder=partial(ConvEncoder, **SMALL_CONV),
        decoder=partial(ConvDecoder, channels=(8, 4)),
        max_iter=3,
        random_state=0,
    )
    quiet(vae.fit, X)
    assert np.all(np.diff(vae.explained_variance_) <= 0)
    # The total variance is the data's, as PCA's.
    total = PCA().fit(X).explained_variance_.sum()
    np.testing.assert_allclose(
        vae.explained_variance_ratio_, vae.explained_variance_ / total, rtol=1e-10
    )
