"""skvae.save / skvae.load: identical outputs, and files refused when altered."""

import json
import pickle
import warnings

import numpy as np
import pandas as pd
import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file
from sklearn.exceptions import ConvergenceWarning

import skvae
from skvae import INNAutoencoder, IsometricVAE, VAETransformer
from skvae._persistence import _checksum

SMALL = {
    VAETransformer: dict(encoder_layers=(8,), decoder_variance="heteroscedastic"),
    INNAutoencoder: dict(n_blocks=2, subnet_layers=(8,)),
    IsometricVAE: dict(encoder_layers=(8,)),
}


@pytest.fixture(scope="module")
def X():
    return np.random.default_rng(0).normal(size=(60, 4))


def _fit(cls, X, **params):
    params = {"max_iter": 3, "random_state": 0, **SMALL[cls], **params}
    est = cls(2, **params)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        return est.fit(X)


def _rewrite(path, change_metadata=None, change_tensors=None, reseal=True):
    """Alter a saved file, optionally with a checksum that matches again."""
    with safe_open(path, framework="pt") as file:
        metadata = file.metadata()
        tensors = {key: file.get_tensor(key) for key in file.keys()}
    if change_metadata:
        change_metadata(metadata)
    if change_tensors:
        change_tensors(tensors)
    if reseal:
        metadata["checksum"] = _checksum(metadata, tensors)
    save_file(tensors, path, metadata=metadata)


@pytest.mark.parametrize("cls", list(SMALL), ids=lambda c: c.__name__)
def test_round_trip_gives_identical_outputs(cls, X, tmp_path):
    est = _fit(cls, X)
    path = tmp_path / "model.safetensors"
    skvae.save(est, path)
    loaded = skvae.load(path)
    assert type(loaded) is cls
    assert loaded.get_params() == est.get_params()
    Z = est.transform(X)
    np.testing.assert_array_equal(loaded.transform(X), Z)
    np.testing.assert_array_equal(loaded.inverse_transform(Z), est.inverse_transform(Z))
    np.testing.assert_array_equal(loaded.score_samples(X), est.score_samples(X))
    np.testing.assert_array_equal(loaded.sample(5), est.sample(5))
    assert loaded.n_iter_ == est.n_iter_
    assert loaded.loss_curve_ == est.loss_curve_


def test_feature_names_and_array_attributes_survive(X, tmp_path):
    frame = pd.DataFrame(X, columns=list("abcd"))
    est = _fit(IsometricVAE, frame)
    skvae.save(est, tmp_path / "m.safetensors")
    loaded = skvae.load(tmp_path / "m.safetensors")
    np.testing.assert_array_equal(loaded.feature_names_in_, list("abcd"))
    np.testing.assert_array_equal(loaded.explained_variance_, est.explained_variance_)
    np.testing.assert_array_equal(loaded.collapsed_, est.collapsed_)
    np.testing.assert_array_equal(loaded.transform(frame), est.transform(frame))


def test_loaded_model_resumes_training_from_its_weights(X, tmp_path):
    est = _fit(VAETransformer, X, max_iter=30)
    skvae.save(est, tmp_path / "m.safetensors")
    loaded = skvae.load(tmp_path / "m.safetensors").set_params(
        warm_start=True, max_iter=1
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        loaded.fit(X)
    fresh = _fit(VAETransformer, X, max_iter=1)
    assert loaded.loss_curve_[0] < fresh.loss_curve_[0]
    assert loaded.loss_curve_[0] == pytest.approx(est.loss_curve_[-1], abs=1.0)


def test_changed_weights_are_refused(X, tmp_path):
    path = tmp_path / "m.safetensors"
    skvae.save(_fit(VAETransformer, X), path)
    data = bytearray(path.read_bytes())
    data[-3] ^= 0xFF  # a byte of the last tensor
    path.write_bytes(bytes(data))
    with pytest.raises(ValueError, match="modified after it was written"):
        skvae.load(path)


def test_changed_parameters_are_refused(X, tmp_path):
    path = tmp_path / "m.safetensors"
    skvae.save(_fit(VAETransformer, X), path)

    def more_samples(metadata):
        params = json.loads(metadata["params"])
        params["n_importance_samples"] = 7
        metadata["params"] = json.dumps(params)

    _rewrite(path, change_metadata=more_samples, reseal=False)
    with pytest.raises(ValueError, match="modified after it was written"):
        skvae.load(path)


@pytest.mark.parametrize(
    "change, message",
    [
        (lambda m: m.update(format_version="2"), "format 2.*Upgrade skvae"),
        (lambda m: m.update(format="other"), "not a skvae model file"),
        (lambda m: m.update(estimator="os.system"), "loads only"),
        (
            lambda m: m.update(
                params=m["params"].replace('"n_components": 2', '"n_components": -1')
            ),
            "invalid parameters.*n_components",
        ),
        (
            lambda m: m.update(
                params=m["params"].replace('"n_components": 2', '"n_components": 3')
            ),
            "weights do not fit",
        ),
        (
            lambda m: m.update(attributes=m["attributes"].replace("n_iter_", "fit")),
            "unexpected attribute 'fit'",
        ),
    ],
)
def test_files_that_do_not_describe_a_valid_model_are_refused(
    X, tmp_path, change, message
):
    path = tmp_path / "m.safetensors"
    skvae.save(_fit(VAETransformer, X), path)
    _rewrite(path, change_metadata=change)
    with pytest.raises(ValueError, match=message):
        skvae.load(path)


class _Payload:
    ran = False

    def __reduce__(self):
        return (_Payload._run, ())

    @staticmethod
    def _run():
        _Payload.ran = True


def test_a_pickle_is_refused_without_running_it(tmp_path):
    path = tmp_path / "m.safetensors"
    path.write_bytes(pickle.dumps(_Payload()))
    with pytest.raises(ValueError, match="not a readable skvae model file"):
        skvae.load(path)
    assert not _Payload.ran


def test_unsaveable_parameters_are_a_clear_error(X, tmp_path):
    est = _fit(VAETransformer, X).set_params(random_state=np.random.RandomState(0))
    with pytest.raises(ValueError, match="random_state, use an int or None"):
        skvae.save(est, tmp_path / "m.safetensors")


def test_callbacks_are_dropped_with_a_warning(X, tmp_path):
    from skorch.callbacks import LRScheduler

    est = _fit(VAETransformer, X, callbacks=[LRScheduler()])
    with pytest.warns(UserWarning, match="callbacks are code"):
        skvae.save(est, tmp_path / "m.safetensors")
    assert skvae.load(tmp_path / "m.safetensors").callbacks is None


def test_pickling_keeps_one_module_shared_with_the_net(X):
    est = _fit(VAETransformer, X)
    assert "module_" not in est.__getstate__()
    again = pickle.loads(pickle.dumps(est))
    assert again.module_ is again.net_.module_
    np.testing.assert_array_equal(again.transform(X), est.transform(X))


def test_a_model_pickled_for_cuda_unpickles_on_a_machine_without_it(X):
    from skorch.exceptions import DeviceWarning

    if torch.cuda.is_available():
        pytest.skip("needs a machine without CUDA")
    est = _fit(VAETransformer, X)
    expected = est.transform(X)
    # What a GPU fit records; its tensors are mapped as real CUDA ones would be.
    est.net_.device = "cuda"
    with pytest.warns(DeviceWarning, match="(?i)cuda"):
        again = pickle.loads(pickle.dumps(est))
    assert torch.device(again.net_.device).type == "cpu"
    np.testing.assert_array_equal(again.transform(X), expected)
