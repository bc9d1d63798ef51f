"""skvae.save / skvae.load: identical outputs, and files refused when altered.

The checksum has no key, so most tests reseal the files they alter: load must
refuse a hostile file on its contents alone, with a ValueError naming it,
cheaply, and without running anything from it.
"""

import builtins
import hashlib
import importlib
import json
import os
import pickle
import re
import subprocess
import sys
import threading
import warnings
from contextlib import contextmanager
from functools import partial

import numpy as np
import pandas as pd
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sklearn.exceptions import ConvergenceWarning
from torch import nn
from torch.nn.modules import module as torch_module

import skvae
from skvae import INNAutoencoder, IsometricVAE, VAETransformer
from skvae.exceptions import PosteriorCollapseWarning
from skvae.nn import ConvDecoder, ConvEncoder

SMALL = {
    VAETransformer: dict(encoder_layers=(8,), decoder_variance="heteroscedastic"),
    INNAutoencoder: dict(n_blocks=2, subnet_layers=(8,)),
    IsometricVAE: dict(encoder_layers=(8,)),
}
# The torch dtype each safetensors dtype is recorded as in the checksum.
TORCH_DTYPES = {
    "F64": "torch.float64",
    "F32": "torch.float32",
    "F16": "torch.float16",
    "BF16": "torch.bfloat16",
    "I64": "torch.int64",
    "I32": "torch.int32",
    "I16": "torch.int16",
    "I8": "torch.int8",
    "U8": "torch.uint8",
    "BOOL": "torch.bool",
}


class TinyNetwork(nn.Module):
    """A user's network, defined in this test module."""

    def __init__(self, n_inputs, n_outputs, hidden=8):
        super().__init__()
        self.layers = nn.Sequential(
            nn.Linear(n_inputs, hidden), nn.Tanh(), nn.Linear(hidden, n_outputs)
        )

    def forward(self, x):
        return self.layers(x)


class StatefulNetwork(nn.Module):
    """A network with tensors outside its state dict, which a file lacks."""

    def __init__(self, n_inputs, n_outputs):
        super().__init__()
        self.linear = nn.Linear(n_inputs, n_outputs)
        self.register_buffer("gain", torch.full((n_outputs,), 0.5), persistent=False)
        self.shift = torch.linspace(-1, 1, n_outputs)

    def forward(self, x):
        return self.linear(x) * self.gain + self.shift.to(x.device)


class NotOnMeta(TinyNetwork):
    """A network whose constructor reads a tensor's value."""

    def __init__(self, n_inputs, n_outputs):
        super().__init__(n_inputs, n_outputs)
        self.bound = float(self.layers[0].weight.detach().abs().max())


def _small_conv():
    """Networks of the kinds a template brings, built anew at each call
    (another partial, another lambda)."""
    return dict(
        encoder=partial(ConvEncoder, channels=(4,)),
        decoder=partial(ConvDecoder, image_shape=(4, 4), channels=[4]),
    )


# Each: the estimator, and its networks, built anew at each call.
NETWORKS = {
    "conv": (VAETransformer, lambda: dict(encoder=ConvEncoder, decoder=ConvDecoder)),
    "own class": (IsometricVAE, lambda: dict(encoder=TinyNetwork)),
    "partial": (VAETransformer, _small_conv),
    "lambda": (VAETransformer, lambda: dict(decoder=lambda i, o: TinyNetwork(i, o))),
    "state outside the state dict": (
        IsometricVAE,
        lambda: dict(decoder=StatefulNetwork),
    ),
    "coupling subnet": (INNAutoencoder, lambda: dict(subnet=TinyNetwork)),
}


@pytest.fixture(scope="module")
def X():
    return np.random.default_rng(0).normal(size=(60, 4))


@pytest.fixture(scope="module")
def images():
    """4×4 images, as rows."""
    return np.random.default_rng(1).random(size=(60, 16))


def _fit(cls, X, **params):
    params = {"max_iter": 3, "random_state": 0, **SMALL[cls], **params}
    est = cls(2, **params)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        warnings.simplefilter("ignore", PosteriorCollapseWarning)
        return est.fit(X)


@pytest.fixture(scope="module")
def saved(X, tmp_path_factory):
    """The bytes of a saved small model of each estimator."""
    folder = tmp_path_factory.mktemp("saved")
    files = {}
    for cls in SMALL:
        skvae.save(_fit(cls, X), folder / cls.__name__)
        files[cls] = (folder / cls.__name__).read_bytes()
    return files


@pytest.fixture(scope="module")
def with_networks(images, tmp_path_factory):
    """The bytes of a saved model with networks given as code, as "networks"."""
    path = tmp_path_factory.mktemp("saved") / "networks"
    skvae.save(_fit(VAETransformer, images, **_small_conv()), path)
    return {"networks": path.read_bytes()}


def _copy(saved, cls, tmp_path):
    path = tmp_path / "m.safetensors"
    path.write_bytes(saved[cls])
    return path


# -- the file format, written out here independently of skvae -----------------


def _unpack(path):
    """A model file as (metadata, tensors), tensors as key: [dtype, shape, bytes]."""
    raw = path.read_bytes()
    n_header = int.from_bytes(raw[:8], "little")
    header = json.loads(raw[8 : 8 + n_header])
    metadata = header.pop("__metadata__")
    data = raw[8 + n_header :]
    tensors = {
        key: [info["dtype"], info["shape"], data[slice(*info["data_offsets"])]]
        for key, info in header.items()
    }
    return metadata, tensors


def _seal(metadata, tensors):
    """The checksum of a model file, as the format defines it."""
    digest = hashlib.sha256()
    for key in sorted(metadata):
        if key != "checksum":
            digest.update(f"{key}={metadata[key]}\n".encode())
    for key in sorted(tensors):
        dtype, shape, data = tensors[key]
        digest.update(
            f"{key}:{TORCH_DTYPES.get(dtype, dtype)}:{tuple(shape)}\n".encode()
        )
        digest.update(data)
    return digest.hexdigest()


def _pack(path, metadata, tensors, reseal=True):
    if reseal:
        metadata = {**metadata, "checksum": _seal(metadata, tensors)}
    header, offset = {"__metadata__": metadata}, 0
    for key, (dtype, shape, data) in tensors.items():
        header[key] = {
            "dtype": dtype,
            "shape": shape,
            "data_offsets": [offset, offset + len(data)],
        }
        offset += len(data)
    _write(path, json.dumps(header).encode(), b"".join(t[2] for t in tensors.values()))


def _write(path, header, data):
    path.write_bytes(len(header).to_bytes(8, "little") + header + data)


def _rewrite(path, change_metadata=None, change_tensors=None, reseal=True):
    """Alter a saved file, optionally with a checksum that matches again."""
    metadata, tensors = _unpack(path)
    if change_metadata:
        change_metadata(metadata)
    if change_tensors:
        change_tensors(tensors)
    _pack(path, metadata, tensors, reseal)


def _edit(entry, **values):
    """A change of the file's params or attributes JSON."""

    def change(metadata):
        content = json.loads(metadata[entry])
        content.update(values)
        metadata[entry] = json.dumps(content)

    return change


def _set_tensor(key, array):
    def change(tensors):
        array_ = np.ascontiguousarray(array)
        dtype = {"float64": "F64", "float32": "F32", "int64": "I64"}[str(array_.dtype)]
        tensors[key] = [dtype, list(array_.shape), array_.tobytes()]

    return change


def _names(path):
    return re.escape(str(path))


class _TooMuchWork(BaseException):
    """Not an Exception: no ``except Exception`` in the code under test may
    turn it into a refusal."""


@contextmanager
def _bounded(max_new_bytes=512 * 2**20, max_registrations=10_000):
    """Fail fast, instead of exhausting the machine, when the code inside maps
    more than ``max_new_bytes`` of new memory (an address-space limit, on
    Linux) or builds more than ``max_registrations`` torch submodules,
    parameters and buffers (the work that a file describing a deep network
    could ask for). Neither measures time."""
    count = 0

    def count_one(*args):
        nonlocal count
        count += 1
        if count > max_registrations:
            raise _TooMuchWork(f"more than {max_registrations} registrations")

    handles = [
        register(count_one)
        for register in (
            torch_module.register_module_module_registration_hook,
            torch_module.register_module_parameter_registration_hook,
            torch_module.register_module_buffer_registration_hook,
        )
    ]
    limit = None
    try:
        import resource

        with open("/proc/self/status") as status:
            kib = next(
                int(line.split()[1]) for line in status if line.startswith("VmSize:")
            )
        limit = resource.getrlimit(resource.RLIMIT_AS)
        resource.setrlimit(resource.RLIMIT_AS, (kib * 1024 + max_new_bytes, limit[1]))
    except (ImportError, OSError, StopIteration, ValueError):  # not Linux
        limit = None
    try:
        yield
    finally:
        if limit is not None:
            resource.setrlimit(resource.RLIMIT_AS, limit)
        for handle in handles:
            handle.remove()


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


def test_per_feature_noise_survives_a_round_trip(X, tmp_path):
    est = _fit(IsometricVAE, X, noise="per_feature")
    skvae.save(est, tmp_path / "m.safetensors")
    loaded = skvae.load(tmp_path / "m.safetensors")
    assert loaded.noise == "per_feature"
    torch.testing.assert_close(
        loaded.module_.noise_weights, est.module_.noise_weights, rtol=0, atol=0
    )
    assert len(np.unique(loaded.noise_variance_)) > 1
    np.testing.assert_array_equal(loaded.score_samples(X), est.score_samples(X))


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
    # The epochs of the saved fit, then the one run after loading.
    assert loaded.loss_curve_[:-1] == est.loss_curve_
    assert loaded.loss_curve_[-1] < fresh.loss_curve_[0]
    assert loaded.loss_curve_[-1] == pytest.approx(est.loss_curve_[-1], abs=1.0)


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
        (lambda m: m.update(format_version="3"), "format 3.*Upgrade skvae"),
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
            # The per-latent attributes are checked before the weights.
            "n_components=3",
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


# -- item 1: a small file may not ask for a huge model -------------------------

HUGE = [
    (VAETransformer, "params", "encoder_layers", [5 * 10**7]),
    (VAETransformer, "params", "encoder_layers", [10**9]),
    (VAETransformer, "params", "n_components", 10**9),
    (VAETransformer, "attributes", "n_features_in_", 10**9),
    (VAETransformer, "params", "encoder_layers", [8] * 20000),
    (VAETransformer, "params", "n_importance_samples", 10**12),
    (IsometricVAE, "params", "decoder_layers", [10**9]),
    (INNAutoencoder, "params", "n_blocks", 20000),
    (INNAutoencoder, "params", "subnet_layers", [10**9]),
    (INNAutoencoder, "attributes", "n_features_in_", 10**5),
]


@pytest.mark.parametrize(
    "cls, entry, key, value",
    HUGE,
    ids=[f"{c.__name__}-{k}={str(v)[:20]}" for c, _, k, v in HUGE],
)
def test_a_small_file_asking_for_a_huge_model_is_refused_cheaply(
    saved, tmp_path, cls, entry, key, value
):
    path = _copy(saved, cls, tmp_path)
    _rewrite(path, change_metadata=_edit(entry, **{key: value}))
    with _bounded(), pytest.raises(ValueError, match=_names(path)):
        skvae.load(path)


@pytest.mark.parametrize(
    "key, value",
    [("max_iter", 10**7), ("n_iter_no_change", 10**7), ("batch_size", 10**10)],
)
def test_parameters_that_size_no_weight_are_bounded(saved, tmp_path, key, value):
    path = _copy(saved, VAETransformer, tmp_path)
    _rewrite(path, change_metadata=_edit("params", **{key: value}))
    with pytest.raises(ValueError, match=f"invalid parameters.*{key}"):
        skvae.load(path)


def test_the_most_importance_samples_a_file_may_ask_for_score_in_bounded_memory(
    X, tmp_path
):
    path = tmp_path / "m.safetensors"
    skvae.save(_fit(VAETransformer, X, encoder_layers=(64,)), path)
    _rewrite(path, change_metadata=_edit("params", n_importance_samples=10**6))
    loaded = skvae.load(path)
    with _bounded():
        assert np.isfinite(loaded.score_samples(X[:1])).all()


# -- item 2: every fitted attribute is checked ---------------------------------

ORDER = "attribute.components_order_"
BAD_ATTRIBUTES = {
    "order with a repeat": (IsometricVAE, None, _set_tensor(ORDER, [0, 0])),
    "order out of range": (IsometricVAE, None, _set_tensor(ORDER, [0, 5])),
    "order of floats": (IsometricVAE, None, _set_tensor(ORDER, [0.0, 1.0])),
    "negative importance": (
        IsometricVAE,
        None,
        _set_tensor("attribute.explained_variance_", [1.0, -1.0]),
    ),
    "collapsed not 0 or 1": (
        IsometricVAE,
        None,
        lambda t: t["attribute.collapsed_"].__setitem__(2, b"\x00\x02"),
    ),
    "seed a string": (VAETransformer, _edit("attributes", _score_seed="x"), None),
    "seed too large": (VAETransformer, _edit("attributes", _score_seed=10**30), None),
    "seed negative": (VAETransformer, _edit("attributes", _score_seed=-1), None),
    "seed missing": (
        VAETransformer,
        lambda m: m.update(
            attributes=json.dumps(
                {
                    k: v
                    for k, v in json.loads(m["attributes"]).items()
                    if k != "_score_seed"
                }
            )
        ),
        None,
    ),
    "feature names too few": (
        VAETransformer,
        _edit("attributes", feature_names_in_={"strings": ["a", "b"]}),
        None,
    ),
    "feature names a number": (
        VAETransformer,
        _edit("attributes", feature_names_in_=5),
        None,
    ),
    "feature names not strings": (
        VAETransformer,
        _edit("attributes", feature_names_in_={"strings": [1, 2, 3, 4]}),
        None,
    ),
    "n_features_in_ a bool": (
        VAETransformer,
        _edit("attributes", n_features_in_=True),
        None,
    ),
    "n_features_in_ a string": (
        VAETransformer,
        _edit("attributes", n_features_in_="4"),
        None,
    ),
    "loss curve of NaN": (
        VAETransformer,
        _edit("attributes", loss_curve_=[float("nan")]),
        None,
    ),
    "device meta": (VAETransformer, _edit("params", device="meta"), None),
    "device not a device": (VAETransformer, _edit("params", device="gpu!"), None),
    "callbacks stored": (VAETransformer, _edit("params", callbacks=[1]), None),
    "non-finite parameter": (VAETransformer, _edit("params", tol=float("inf")), None),
    "non-finite weight": (
        VAETransformer,
        None,
        _set_tensor("module.encoder.0.bias", np.full(8, np.nan, np.float32)),
    ),
    "noise variance not positive": (
        IsometricVAE,
        None,
        lambda t: t.__setitem__(
            "module.noise_variance", ["F64", [], np.float64(-0.1).tobytes()]
        ),
    ),
    "noise weight zero": (
        IsometricVAE,
        None,
        _set_tensor("module.noise_weights", np.array([1.0, 0.0, 1.0, 2.0])),
    ),
    "mixing not a permutation": (
        INNAutoencoder,
        None,
        _set_tensor("module.net.mixings.0.perm", [0, 0, 1, 2]),
    ),
    "input rotation not orthogonal": (
        INNAutoencoder,
        None,
        _set_tensor("module.net.input_layer.rotation", 2 * np.eye(4, dtype=np.float32)),
    ),
}


@pytest.mark.parametrize("case", list(BAD_ATTRIBUTES))
def test_invalid_fitted_attributes_and_weights_are_refused(saved, tmp_path, case):
    cls, change_metadata, change_tensors = BAD_ATTRIBUTES[case]
    path = _copy(saved, cls, tmp_path)
    _rewrite(path, change_metadata, change_tensors)
    with pytest.raises(ValueError, match=_names(path)):
        skvae.load(path)


def test_a_device_this_machine_lacks_loads_on_the_cpu(saved, tmp_path, X):
    if torch.cuda.is_available():
        pytest.skip("needs a machine without CUDA")
    path = _copy(saved, VAETransformer, tmp_path)
    _rewrite(path, _edit("params", device="cuda:7"))
    with pytest.warns(UserWarning, match="loaded on the CPU"):
        loaded = skvae.load(path)
    assert next(loaded.module_.parameters()).device.type == "cpu"
    assert np.isfinite(loaded.transform(X)).all()


def test_save_refuses_an_attribute_load_would_refuse(X, tmp_path):
    est = _fit(VAETransformer, X)
    est.notes_ = "mine"
    with pytest.raises(ValueError, match="notes_"):
        skvae.save(est, tmp_path / "m.safetensors")


# -- item 3: a malformed file is a ValueError that names it --------------------


def _deep(n):
    return "[" * n + "]" * n


MALFORMED_METADATA = {
    "no params": lambda m: m.pop("params"),
    "no attributes": lambda m: m.pop("attributes"),
    "params a list": lambda m: m.update(params="[]"),
    "params null": lambda m: m.update(params="null"),
    "params not JSON": lambda m: m.update(params="{"),
    "params with a repeated key": lambda m: m.update(
        params=m["params"].replace("{", '{"tol": 1.0, "tol": 0.1, ', 1)
    ),
    "params nested 100000 deep": lambda m: m.update(params=_deep(100_000)),
    "attributes a list": lambda m: m.update(attributes="[]"),
    "attributes nested 100000 deep": lambda m: m.update(
        attributes='{"a": ' * 100_000 + "1" + "}" * 100_000
    ),
    "format_version ²": lambda m: m.update(format_version="²"),
    "format_version of 5000 digits": lambda m: m.update(format_version="9" * 5000),
    "no format": lambda m: m.pop("format"),
}


@pytest.mark.parametrize("case", list(MALFORMED_METADATA))
def test_malformed_metadata_is_a_value_error_naming_the_file(saved, tmp_path, case):
    path = _copy(saved, VAETransformer, tmp_path)
    _rewrite(path, change_metadata=MALFORMED_METADATA[case])
    with pytest.raises(ValueError, match=_names(path)):
        skvae.load(path)


def _retype(key, dtype, itemsize):
    def change(tensors):
        shape = tensors[key][1]
        tensors[key] = [dtype, shape, bytes(int(np.prod(shape)) * itemsize)]

    return change


MALFORMED_TENSORS = {
    "bfloat16 attribute": (
        IsometricVAE,
        _retype("attribute.explained_variance_", "BF16", 2),
    ),
    "float64 weight": (VAETransformer, _retype("module.encoder.0.bias", "F64", 8)),
    "unknown dtype": (VAETransformer, _retype("module.encoder.0.bias", "F8_E4M3", 1)),
    "unexpected tensor": (
        VAETransformer,
        lambda t: t.update({"extra": ["F32", [1], bytes(4)]}),
    ),
    "weight missing": (VAETransformer, lambda t: t.pop("module.encoder.0.bias")),
    "weight of another shape": (
        VAETransformer,
        lambda t: t.update({"module.encoder.0.bias": ["F32", [2, 4], bytes(32)]}),
    ),
}


@pytest.mark.parametrize("case", list(MALFORMED_TENSORS))
def test_malformed_tensors_are_a_value_error_naming_the_file(saved, tmp_path, case):
    cls, change = MALFORMED_TENSORS[case]
    path = _copy(saved, cls, tmp_path)
    _rewrite(path, change_tensors=change)
    with pytest.raises(ValueError, match=_names(path)):
        skvae.load(path)


def _raw(header, data=b""):
    """A file from a header (an object, or raw bytes) and data bytes."""
    if not isinstance(header, bytes):
        header = json.dumps(header).encode()
    return len(header).to_bytes(8, "little") + header + data


ENTRY = {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}
MALFORMED_FILES = {
    "empty": b"",
    "three bytes": b"abc",
    "header beyond the file": (1000).to_bytes(8, "little") + b"{}",
    "header of 2**63 bytes": (2**63).to_bytes(8, "little") + b"{}",
    "header not UTF-8": _raw(b'{"\xff": 1}'),
    "header not JSON": _raw(b"{"),
    "header a list": _raw([]),
    "header nested 100000 deep": _raw(
        ('{"a": ' * 100_000 + "1" + "}" * 100_000).encode()
    ),
    "header brackets 100000 deep in garbage": _raw(("[" * 100_000).encode()),
    "metadata not strings": _raw({"__metadata__": {"format": 1}}),
    "entry without offsets": _raw({"t": {"dtype": "F32", "shape": [2]}}, bytes(8)),
    "negative shape": _raw({"t": {**ENTRY, "shape": [-2]}}, bytes(8)),
    "boolean shape": _raw({"t": {**ENTRY, "shape": [True, 2]}}, bytes(8)),
    "shape of huge dimensions": _raw(
        {"t": {**ENTRY, "shape": [2**62] * 10_000}}, bytes(8)
    ),
    "offsets not spanning the shape": _raw(
        {"t": {**ENTRY, "data_offsets": [0, 4]}}, bytes(8)
    ),
    "overlapping tensors": _raw({"t": ENTRY, "u": ENTRY}, bytes(8)),
    "trailing data": _raw({"t": ENTRY}, bytes(12)),
    "missing data": _raw({"t": ENTRY}, bytes(4)),
    "no metadata": _raw({"t": ENTRY}, bytes(8)),
}


@pytest.mark.parametrize("case", list(MALFORMED_FILES))
def test_malformed_files_are_a_value_error_naming_the_file(tmp_path, case):
    path = tmp_path / "m.safetensors"
    path.write_bytes(MALFORMED_FILES[case])
    with _bounded(), pytest.raises(ValueError, match=_names(path)):
        skvae.load(path)


# -- item 4: the file is read once ---------------------------------------------

_TRUNCATE_DURING_LOAD = """
import hashlib, os, sys
import numpy as np
import skvae

path, expected = sys.argv[1], np.load(sys.argv[2])
sha256 = hashlib.sha256

def truncating_sha256(*args):
    # The checksum runs once the file has been read: another process
    # truncates it now.
    hashlib.sha256 = sha256
    os.truncate(path, 0)
    return sha256(*args)

hashlib.sha256 = truncating_sha256
loaded = skvae.load(path)
assert os.path.getsize(path) == 0
assert np.array_equal(loaded.transform(expected[:, :4]), expected[:, 4:])
"""


def test_a_file_truncated_during_load_cannot_crash_the_process(X, tmp_path):
    # Run apart: reading through a memory map, the process died of SIGBUS.
    est = _fit(VAETransformer, X)
    path = tmp_path / "m.safetensors"
    skvae.save(est, path)
    np.save(tmp_path / "expected.npy", np.hstack([X, est.transform(X)]))
    run = subprocess.run(
        [
            sys.executable,
            "-c",
            _TRUNCATE_DURING_LOAD,
            str(path),
            str(tmp_path / "expected.npy"),
        ],
        capture_output=True,
        text=True,
        timeout=600,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    assert run.returncode == 0, run.stderr[-2000:]


def test_a_file_that_changes_size_while_read_is_refused(X, tmp_path, monkeypatch):
    # Weights beyond the reader's buffer, so that the data is read after the
    # header and from the disk.
    path = tmp_path / "m.safetensors"
    skvae.save(_fit(VAETransformer, X, encoder_layers=(1024,)), path)
    read_header = skvae._persistence._read_header

    def truncate_after_the_header(file, size, path_):
        header = read_header(file, size, path_)
        os.truncate(path, size - 1)
        return header

    monkeypatch.setattr(skvae._persistence, "_read_header", truncate_after_the_header)
    with pytest.raises(ValueError, match="changed while it was being read"):
        skvae.load(path)


# -- item 5: only regular files are read ---------------------------------------


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="needs FIFOs")
def test_a_fifo_is_refused_without_being_opened(tmp_path):
    fifo = tmp_path / "m.safetensors"
    os.mkfifo(fifo)
    opened, done = threading.Event(), threading.Event()

    def watch():
        # Opening the write end without blocking succeeds only while a
        # reader holds the FIFO open; it then also unblocks that reader.
        while not done.is_set():
            try:
                os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))
                opened.set()
            except OSError:
                done.wait(0.01)

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    try:
        with pytest.raises(ValueError, match=f"{_names(fifo)} is not a regular file"):
            skvae.load(fifo)
    finally:
        done.set()
        watcher.join()
    assert not opened.is_set()


def test_a_directory_or_device_is_refused(tmp_path):
    with pytest.raises(ValueError, match="not a regular file"):
        skvae.load(tmp_path)
    if os.path.exists(os.devnull):
        with pytest.raises(ValueError, match="not a regular file"):
            skvae.load(os.devnull)


def test_a_missing_file_is_file_not_found(tmp_path):
    with pytest.raises(FileNotFoundError):
        skvae.load(tmp_path / "absent.safetensors")


# -- issue 12: networks given as code come back from a template ----------------


def _record(path, key):
    return json.loads(_unpack(path)[0]["params"])[key]


@pytest.mark.parametrize("case", list(NETWORKS))
def test_a_template_brings_the_networks_back_with_identical_outputs(
    images, tmp_path, case
):
    cls, networks = NETWORKS[case]
    est = _fit(cls, images, **networks())
    path = tmp_path / "m.safetensors"
    skvae.save(est, path)
    template = cls(n_components=1, max_iter=7, **networks())
    loaded = skvae.load(path, estimator=template)
    assert type(loaded) is cls
    # The template's networks, the file's other parameters.
    brought = {key: template.get_params()[key] for key in networks()}
    assert loaded.get_params() == {**est.get_params(), **brought}
    assert template.get_params()["n_components"] == 1
    Z = est.transform(images)
    np.testing.assert_array_equal(loaded.transform(images), Z)
    np.testing.assert_array_equal(loaded.inverse_transform(Z), est.inverse_transform(Z))
    np.testing.assert_array_equal(
        loaded.score_samples(images), est.score_samples(images)
    )
    np.testing.assert_array_equal(loaded.sample(5), est.sample(5))


def test_a_network_is_recorded_by_its_import_path_never_as_code(images, tmp_path):
    path = tmp_path / "m.safetensors"
    skvae.save(_fit(VAETransformer, images, **_small_conv()), path)
    assert _record(path, "encoder") == {
        "module": "skvae.nn.conv",
        "qualname": "ConvEncoder",
        "importable": True,
        "partial": True,
        "args": [],
        "keywords": {"channels": [4]},
    }
    assert _unpack(path)[0]["format_version"] == "2"
    skvae.save(_fit(IsometricVAE, images, encoder=TinyNetwork), path)
    assert _record(path, "encoder") == {
        "module": TinyNetwork.__module__,
        "qualname": "TinyNetwork",
        "importable": True,
    }
    assert _record(path, "decoder") is None
    # A lambda, a bound method, an object with __call__ cannot be imported;
    # nor can a partial's arguments that are not plain values.
    for network, qualname in [
        (lambda i, o: TinyNetwork(i, o), "<lambda>"),
        (partial(TinyNetwork, hidden=np.int64(4)), "TinyNetwork"),
        (partial(TinyNetwork, hidden=torch.tensor(4)), "TinyNetwork"),
    ]:
        skvae.save(_fit(IsometricVAE, images, encoder=network), path)
        record = _record(path, "encoder")
        assert record["qualname"].endswith(qualname)
        assert record["importable"] == (qualname != "<lambda>")
    assert record["args"] is None and record["keywords"] is None
    skvae.save(_fit(IsometricVAE, images), path)
    assert _unpack(path)[0]["format_version"] == "1"


def test_without_a_template_the_refusal_says_how_to_load_the_file(images, tmp_path):
    path = tmp_path / "m.safetensors"
    skvae.save(_fit(VAETransformer, images, encoder=ConvEncoder), path)
    hint = f"skvae.load({str(path)!r}, estimator=VAETransformer(encoder=ConvEncoder))"
    with pytest.raises(ValueError, match=_names(path)) as error:
        skvae.load(path)
    assert "skvae.nn.conv.ConvEncoder" in str(error.value)
    assert hint in str(error.value)
    skvae.save(_fit(VAETransformer, images, decoder=lambda i, o: nn.Linear(i, o)), path)
    with pytest.raises(ValueError, match=r"decoder=<your network>"):
        skvae.load(path)


def test_a_template_of_another_class_is_refused(with_networks, tmp_path):
    path = _copy(with_networks, "networks", tmp_path)
    with pytest.raises(ValueError, match=f"{_names(path)}.*IsometricVAE"):
        skvae.load(path, estimator=IsometricVAE(**_small_conv()))
    with pytest.raises(TypeError, match="got the class VAETransformer"):
        skvae.load(path, estimator=VAETransformer)


BAD_TEMPLATES = {
    "another class": dict(encoder=TinyNetwork),
    "another partial argument": dict(encoder=partial(ConvEncoder, channels=(5,))),
    "the class, not the partial": dict(encoder=ConvEncoder),
    "a lambda for a class": dict(encoder=lambda i, o: ConvEncoder(i, o)),
    "no network": dict(encoder=None),
    "not callable": dict(encoder="skvae.nn.conv.ConvEncoder"),
}


@pytest.mark.parametrize("case", list(BAD_TEMPLATES))
def test_a_template_with_networks_other_than_recorded_is_refused(
    with_networks, tmp_path, case
):
    path = _copy(with_networks, "networks", tmp_path)
    template = VAETransformer(**{**_small_conv(), **BAD_TEMPLATES[case]})
    with pytest.raises(ValueError, match=f"{_names(path)}.*encoder"):
        skvae.load(path, estimator=template)


def test_a_template_for_a_file_without_networks(saved, tmp_path, X):
    path = _copy(saved, VAETransformer, tmp_path)
    # Only its class is used: the parameters are the file's.
    loaded = skvae.load(path, estimator=VAETransformer(n_components=1))
    assert loaded.n_components == 2
    np.testing.assert_array_equal(loaded.transform(X), skvae.load(path).transform(X))
    with pytest.raises(ValueError, match=f"{_names(path)}.*encoder is the built-in"):
        skvae.load(path, estimator=VAETransformer(encoder=TinyNetwork))


def test_a_template_whose_network_has_other_shapes_is_refused(images, tmp_path):
    path = tmp_path / "m.safetensors"
    skvae.save(
        _fit(VAETransformer, images, decoder=lambda i, o: TinyNetwork(i, o)), path
    )
    # A record of a lambda accepts any network, but not other weights.
    template = VAETransformer(decoder=lambda i, o: TinyNetwork(i, o, hidden=9))
    with pytest.raises(ValueError, match=f"{_names(path)}.*do not fit.*decoder"):
        skvae.load(path, estimator=template)


def test_a_network_that_does_not_build_on_the_meta_device_is_refused(images, tmp_path):
    path = tmp_path / "m.safetensors"
    skvae.save(_fit(IsometricVAE, images, encoder=NotOnMeta), path)
    with pytest.raises(ValueError, match=r"meta device.*torch\.device\('meta'\)"):
        skvae.load(path, estimator=IsometricVAE(encoder=NotOnMeta))


@pytest.mark.parametrize(
    "module, loads",
    [("__main__", True), ("skvae.nn.other", False), ("skvae.nn.conv", True)],
)
def test_a_class_saved_from_a_script_matches_one_of_the_same_name(
    with_networks, tmp_path, module, loads
):
    path = _copy(with_networks, "networks", tmp_path)
    # A script or notebook's classes live in __main__, which is no import path.
    record = {**_record(path, "decoder"), "module": module}
    _rewrite(path, _edit("params", decoder=record))
    if loads:
        skvae.load(path, estimator=VAETransformer(**_small_conv()))
    else:
        with pytest.raises(ValueError, match=r"skvae\.nn\.other\.ConvDecoder"):
            skvae.load(path, estimator=VAETransformer(**_small_conv()))


class _Imported(BaseException):
    """Not an Exception, so that no ``except Exception`` can hide it."""


@contextmanager
def _nothing_imported_or_run(*names):
    """Fail on an import of a module in ``names``, or a call of os.system,
    within the block; and record every module imported through importlib."""
    real_import, real_import_module, real_system = (
        builtins.__import__,
        importlib.import_module,
        os.system,
    )
    imported = []

    def guarded_import(name, *args, **kwargs):
        if name.partition(".")[0] in names:
            raise _Imported(name)
        return real_import(name, *args, **kwargs)

    def guarded_import_module(name, *args, **kwargs):
        imported.append(name)
        return guarded_import(name) and real_import_module(name, *args, **kwargs)

    def system(command):
        raise _Imported(f"os.system({command!r})")

    builtins.__import__, importlib.import_module, os.system = (
        guarded_import,
        guarded_import_module,
        system,
    )
    try:
        yield imported
    finally:
        builtins.__import__, importlib.import_module, os.system = (
            real_import,
            real_import_module,
            real_system,
        )


NAMES = {
    "os.system": {"module": "os", "qualname": "system", "importable": True},
    "a module that does not exist": {
        "module": "skvae_never_imported",
        "qualname": "Net",
        "importable": True,
    },
}


@pytest.mark.parametrize("case", list(NAMES))
def test_loading_never_imports_or_runs_a_name_from_the_file(
    with_networks, tmp_path, case
):
    path = _copy(with_networks, "networks", tmp_path)
    _rewrite(path, _edit("params", encoder=NAMES[case]))
    with _nothing_imported_or_run("skvae_never_imported") as imported:
        with pytest.raises(ValueError, match="never imports") as error:
            skvae.load(path)
        assert "{module}.{qualname}".format(**NAMES[case]) in str(error.value)
        with pytest.raises(ValueError, match="template's encoder is"):
            skvae.load(path, estimator=VAETransformer(**_small_conv()))
    assert not imported
    assert "skvae_never_imported" not in sys.modules


def test_a_record_of_a_callable_that_cannot_be_imported_accepts_any_network(
    with_networks, tmp_path, images
):
    path = _copy(with_networks, "networks", tmp_path)
    expected = skvae.load(path, estimator=VAETransformer(**_small_conv()))
    names = {**NAMES["os.system"], "importable": False}
    _rewrite(path, _edit("params", encoder=names))
    with _nothing_imported_or_run("skvae_never_imported") as imported:
        loaded = skvae.load(path, estimator=VAETransformer(**_small_conv()))
    assert not imported
    np.testing.assert_array_equal(loaded.transform(images), expected.transform(images))


RECORD = {"module": "skvae.nn.conv", "qualname": "ConvEncoder", "importable": True}
BAD_RECORDS = {
    "a string": "skvae.nn.conv.ConvEncoder",
    "a list": ["skvae.nn.conv", "ConvEncoder"],
    "an empty object": {},
    "no importable": {"module": "skvae.nn.conv", "qualname": "ConvEncoder"},
    "an extra key": {**RECORD, "code": "import os"},
    "a module of another type": {**RECORD, "module": 1},
    "importable a string": {**RECORD, "importable": "yes"},
    "partial false": {**RECORD, "partial": False},
    "partial without arguments": {**RECORD, "partial": True},
    "partial arguments a string": {
        **RECORD,
        "partial": True,
        "args": "[]",
        "keywords": {},
    },
    "a non-finite partial argument": {
        **RECORD,
        "partial": True,
        "args": [float("inf")],
        "keywords": {},
    },
}


@pytest.mark.parametrize("case", list(BAD_RECORDS))
@pytest.mark.parametrize("with_template", [False, True])
def test_a_malformed_record_is_a_value_error_naming_the_file(
    with_networks, tmp_path, case, with_template
):
    path = _copy(with_networks, "networks", tmp_path)
    _rewrite(path, _edit("params", encoder=BAD_RECORDS[case]))
    template = VAETransformer(**_small_conv()) if with_template else None
    with pytest.raises(ValueError, match=_names(path)):
        skvae.load(path, estimator=template)


def test_save_refuses_a_network_that_is_not_callable(images, tmp_path):
    est = _fit(VAETransformer, images, **_small_conv()).set_params(encoder="mine")
    with pytest.raises(ValueError, match="encoder='mine'"):
        skvae.save(est, tmp_path / "m.safetensors")


# -- the fuzz: a mutated file loads, or is refused with a ValueError -----------

FUZZ = settings(
    max_examples=150,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
sizes = st.one_of(
    st.integers(-2, 12),
    st.sampled_from([10**9, 5 * 10**7, 20_000, 2**31, 2**63, 10**30]),
)
json_values = st.one_of(
    st.recursive(
        st.one_of(
            st.none(),
            st.booleans(),
            sizes,
            st.floats(),
            st.text(max_size=6),
            st.sampled_from(["meta", "cpu", "cuda:7", "auto", "relu", "orthogonal"]),
        ),
        lambda inner: (
            st.lists(inner, max_size=4)
            | st.dictionaries(st.text(max_size=4), inner, max_size=3)
        ),
        max_leaves=6,
    ),
    # Deep networks in a few bytes.
    st.builds(lambda n, w: [w] * n, st.sampled_from([50, 20_000]), st.just(8)),
    # Feature names, as stored.
    st.fixed_dictionaries({"strings": st.lists(st.text(max_size=3), max_size=5)}),
)
# Records of networks given as code, well formed or nearly, naming modules
# that must never be imported.
records = st.fixed_dictionaries(
    {
        "module": st.sampled_from(
            ["skvae.nn.conv", "os", "__main__", "skvae_never_imported", ""]
        ),
        "qualname": st.sampled_from(
            ["ConvEncoder", "ConvDecoder", "system", "<lambda>", "f.<locals>.g"]
        ),
        "importable": st.sampled_from([True, False, 1]),
    },
    optional={
        "partial": st.sampled_from([True, False]),
        "args": st.one_of(st.just([]), json_values),
        "keywords": st.one_of(
            st.just({"channels": [4]}), st.just({"image_shape": [4, 4]}), json_values
        ),
    },
)
param_values = st.one_of(json_values, records)
texts = st.one_of(
    st.text(max_size=20),
    json_values.map(json.dumps),
    st.sampled_from([_deep(5000), "{" * 5000, '{"a": 1, "a": 2}', "²", "NaN"]),
)
ITEMSIZES = {"F64": 8, "I64": 8, "F32": 4, "I32": 4, "F16": 2, "BF16": 2, "I16": 2}


ATTRIBUTES = [
    "n_features_in_",
    "feature_names_in_",
    "n_iter_",
    "loss_curve_",
    "validation_loss_curve_",
    "_score_seed",
    "components_order_",
    "net_",
    "encoder",
    "decoder",
]


def _mutate_json(data, metadata, entry):
    try:
        content = dict(json.loads(metadata[entry]))
    except (KeyError, TypeError, ValueError, RecursionError):  # a mutation broke it
        content = {}
    key = data.draw(st.sampled_from(sorted({*content, *ATTRIBUTES, "other_"})))
    if data.draw(st.booleans()):
        content[key] = data.draw(param_values if entry == "params" else json_values)
    else:
        content.pop(key, None)
    metadata[entry] = json.dumps(content)


def _mutate_tensor(data, tensors):
    key = data.draw(st.sampled_from(sorted(tensors)))
    dtype, shape, raw = tensors[key]
    kind = data.draw(st.sampled_from(["dtype", "shape", "values", "drop", "copy"]))
    if kind == "dtype":
        dtype = data.draw(st.sampled_from([*TORCH_DTYPES, "F8_E4M3", "X"]))
    elif kind == "shape":
        shape = data.draw(st.lists(sizes, max_size=4))
    elif kind == "values":
        raw = data.draw(st.binary(min_size=len(raw), max_size=len(raw)))
    elif kind == "drop":
        del tensors[key]
        return
    else:
        key = data.draw(st.sampled_from([key + "2", "attribute.extra_", "other"]))
    # Most often the bytes match the new dtype and shape, to reach the checks
    # past the header's.
    n_elements = np.prod(shape, dtype=object) if shape else 1
    if dtype in ITEMSIZES and 0 <= n_elements <= 4096 and data.draw(st.booleans()):
        raw = bytes(int(n_elements) * ITEMSIZES[dtype])
    tensors[key] = [dtype, shape, raw]


def _mutated_file(data, path):
    metadata, tensors = _unpack(path)
    for _ in range(data.draw(st.integers(1, 3))):
        kind = data.draw(
            st.sampled_from(["params", "attributes", "metadata", "tensor"])
        )
        if kind in ("params", "attributes"):
            _mutate_json(data, metadata, kind)
        elif kind == "metadata":
            key = data.draw(st.sampled_from([*sorted(metadata), "other"]))
            metadata[key] = data.draw(texts)
        else:
            _mutate_tensor(data, tensors)
    _pack(
        path, metadata, tensors, reseal=data.draw(st.sampled_from([True] * 3 + [False]))
    )
    raw = bytearray(path.read_bytes())
    kind = data.draw(st.sampled_from(["none"] * 5 + ["byte", "truncate", "append"]))
    if kind == "byte":
        raw[data.draw(st.integers(0, len(raw) - 1))] = data.draw(st.integers(0, 255))
    elif kind == "truncate":
        del raw[data.draw(st.integers(0, len(raw) - 1)) :]
    elif kind == "append":
        raw += data.draw(st.binary(min_size=1, max_size=16))
    path.write_bytes(bytes(raw))


@FUZZ
@given(data=st.data())
def test_a_mutated_file_loads_or_is_refused_with_a_value_error(
    saved, with_networks, X, images, tmp_path, data
):
    case = data.draw(st.sampled_from([*SMALL, "networks", "networks"]))
    path = _copy({**saved, **with_networks}, case, tmp_path)
    _mutated_file(data, path)
    # Mostly the template the file needs: the networks it was saved with, or
    # none or a plain estimator of its class.
    if case == "networks":
        template = data.draw(st.sampled_from(["networks"] * 4 + [None, IsometricVAE]))
    else:
        template = data.draw(st.sampled_from([None, None, case, "networks"]))
    if template == "networks":
        template = VAETransformer(**_small_conv())
    elif template is not None:
        template = template()
    X = images if case == "networks" else X
    with (
        _bounded(),
        warnings.catch_warnings(),
        _nothing_imported_or_run("skvae_never_imported") as imported,
    ):
        # A device this machine lacks: the model is loaded on the CPU.
        warnings.simplefilter("ignore", UserWarning)
        try:
            est = skvae.load(path, estimator=template)
        except (ValueError, FileNotFoundError):
            return
        finally:
            assert not imported
        # What loads is a working model: finite outputs, or a ValueError.
        for method in (est.transform, est.score_samples, est.inverse_transform):
            try:
                out = method(X[:3] if method != est.inverse_transform else X[:3, :2])
            except ValueError:
                continue
            assert np.isfinite(out).all()
