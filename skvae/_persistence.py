"""Saving and loading fitted estimators without executing code on load.

A model file is one safetensors file: the torch module's weights and the
array-valued fitted attributes as tensors, and, in its text metadata, the
estimator's class and parameters and the other fitted attributes as JSON,
a format version and a SHA-256 checksum of all of it. Loading parses JSON
and raw tensors only, unlike ``pickle`` or ``torch.load``, which can run
code stored in the file.
"""

import hashlib
import json
import re
import warnings
from numbers import Integral, Real

import numpy as np
import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file
from sklearn.utils.validation import check_is_fitted

from ._inn import INNAutoencoder
from ._isometric import IsometricVAE
from ._vae import VAETransformer

FORMAT = "skvae"
FORMAT_VERSION = 1
# Only these classes are ever built from a file: the name in a file selects
# one of them, it is never imported.
ESTIMATORS = {
    cls.__name__: cls for cls in (INNAutoencoder, IsometricVAE, VAETransformer)
}
# Training state that is not saved: the optimiser, the skorch net and its
# history (loss_curve_ keeps the losses).
_NOT_SAVED = {"net_", "history_", "module_"}
_ATTRIBUTE_NAME = re.compile(r"^(_score_seed|[a-z][a-z0-9_]*_)$")
_MODULE, _ATTRIBUTE = "module.", "attribute."


def save(estimator, path):
    """Write a fitted skvae estimator to a file that loads without running code.

    The file holds the estimator's parameters, its fitted attributes and its
    network's weights (see :func:`load`). The training state (the optimiser
    and the skorch net) is not saved; ``callbacks`` are code and are stored
    as None, with a warning.

    Parameters
    ----------
    estimator : VAETransformer, INNAutoencoder or IsometricVAE
        A fitted estimator.
    path : str or path-like
        File to write, conventionally with the suffix ``.safetensors``.

    Returns
    -------
    None

    See Also
    --------
    load : Read the file back.

    Examples
    --------
    >>> import tempfile, pathlib
    >>> import numpy as np
    >>> import skvae
    >>> X = np.random.default_rng(0).normal(size=(50, 4))
    >>> vae = skvae.VAETransformer(2, encoder_layers=(8,), max_iter=2,
    ...                            random_state=0).fit(X)
    >>> path = pathlib.Path(tempfile.mkdtemp()) / "vae.safetensors"
    >>> skvae.save(vae, path)
    >>> again = skvae.load(path)
    >>> np.array_equal(again.transform(X), vae.transform(X))
    True
    """
    name = type(estimator).__name__
    if ESTIMATORS.get(name) is not type(estimator):
        raise TypeError(f"save writes {', '.join(sorted(ESTIMATORS))}; got a {name}.")
    check_is_fitted(estimator)
    params = _json_params(estimator)
    attributes, arrays = _split_attributes(estimator)
    tensors = {
        _MODULE + key: value.detach().to("cpu").contiguous().clone()
        for key, value in estimator.module_.state_dict().items()
    }
    tensors.update(
        {
            _ATTRIBUTE + key: torch.from_numpy(np.ascontiguousarray(value))
            for key, value in arrays.items()
        }
    )
    metadata = {
        "format": FORMAT,
        "format_version": str(FORMAT_VERSION),
        "skvae_version": _skvae_version(),
        "estimator": name,
        "params": json.dumps(params, sort_keys=True),
        "attributes": json.dumps(attributes, sort_keys=True),
    }
    metadata["checksum"] = _checksum(metadata, tensors)
    save_file(tensors, path, metadata=metadata)


def load(path):
    """Read an estimator written by :func:`save`, executing no code from the file.

    The file is refused with a ``ValueError`` when it is not a skvae model
    file, comes from a newer format version than this skvae reads, was
    modified after it was written (its checksum no longer matches), or holds
    parameters or weights that do not fit the estimator. The checksum
    catches corruption and edits; it cannot prove who wrote the file.

    Parameters
    ----------
    path : str or path-like
        File written by :func:`save`.

    Returns
    -------
    estimator : VAETransformer, INNAutoencoder or IsometricVAE
        The fitted estimator, with the same outputs as the one saved. Its
        ``net_`` and ``history_`` are not restored: ``fit`` with
        ``warm_start=True`` or ``partial_fit`` continue training from the
        loaded weights with a new optimiser.

    See Also
    --------
    save : Write a fitted estimator.

    Examples
    --------
    >>> import tempfile, pathlib
    >>> import numpy as np
    >>> import skvae
    >>> X = np.random.default_rng(0).normal(size=(50, 4))
    >>> vae = skvae.VAETransformer(2, encoder_layers=(8,), max_iter=2,
    ...                            random_state=0).fit(X)
    >>> path = pathlib.Path(tempfile.mkdtemp()) / "vae.safetensors"
    >>> skvae.save(vae, path)
    >>> skvae.load(path).score(X) == vae.score(X)
    True
    """
    metadata, tensors = _read(path)
    version = metadata.get("format_version", "")
    if metadata.get("format") != FORMAT or not version.isdigit():
        raise ValueError(f"{path} is a safetensors file but not a skvae model file.")
    if int(version) > FORMAT_VERSION:
        raise ValueError(
            f"{path} was written in skvae model format {version} (by skvae "
            f"{metadata.get('skvae_version', '?')}); this skvae "
            f"{_skvae_version()} reads formats up to {FORMAT_VERSION}. Upgrade "
            "skvae to load it."
        )
    if metadata.get("checksum") != _checksum(metadata, tensors):
        raise ValueError(
            f"{path} was modified after it was written: its checksum does not "
            "match its contents. Refusing to load it."
        )
    cls = ESTIMATORS.get(metadata.get("estimator"))
    if cls is None:
        raise ValueError(
            f"{path} names the estimator {metadata.get('estimator')!r}; skvae "
            f"loads only {', '.join(sorted(ESTIMATORS))}."
        )
    estimator = cls()
    try:
        estimator.set_params(**_from_json_params(json.loads(metadata["params"])))
        estimator._validate_params()
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{path} holds invalid parameters: {exc}") from exc
    _restore_attributes(estimator, json.loads(metadata["attributes"]), tensors, path)
    estimator.module_ = _restore_module(estimator, tensors, path)
    return estimator


# -- writing -----------------------------------------------------------------


def _json_params(estimator):
    params = {}
    for key, value in estimator.get_params(deep=False).items():
        if key == "callbacks" and value:
            warnings.warn(
                "callbacks are code and are not saved; the loaded estimator has "
                "callbacks=None.",
                UserWarning,
                stacklevel=3,
            )
            value = None
        params[key] = _to_json(value, f"parameter {key}")
    return params


def _split_attributes(estimator):
    """Fitted attributes as JSON values and as numeric arrays."""
    attributes, arrays = {}, {}
    for key, value in vars(estimator).items():
        if key in _NOT_SAVED or not _ATTRIBUTE_NAME.match(key):
            continue
        if isinstance(value, np.ndarray) and value.dtype != object:
            arrays[key] = value
        elif isinstance(value, np.ndarray):
            attributes[key] = {"strings": [str(v) for v in value]}
        else:
            attributes[key] = _to_json(value, f"fitted attribute {key}")
    return attributes, arrays


def _to_json(value, what):
    if value is None or isinstance(value, bool | str):
        return value
    if isinstance(value, Integral):
        return int(value)
    if isinstance(value, Real):
        return float(value)
    if isinstance(value, torch.device):
        return str(value)
    if isinstance(value, list | tuple | np.ndarray):
        return [_to_json(v, what) for v in value]
    raise ValueError(
        f"save cannot store the {what}={value!r} (a {type(value).__name__}); "
        "only numbers, strings, None and sequences of them can be saved. For "
        "random_state, use an int or None."
    )


def _checksum(metadata, tensors):
    digest = hashlib.sha256()
    for key in sorted(metadata):
        if key != "checksum":
            digest.update(f"{key}={metadata[key]}\n".encode())
    for key in sorted(tensors):
        tensor = tensors[key]
        digest.update(f"{key}:{tensor.dtype}:{tuple(tensor.shape)}\n".encode())
        digest.update(
            tensor.reshape(-1).contiguous().view(torch.uint8).numpy().tobytes()
        )
    return digest.hexdigest()


def _skvae_version():
    from . import __version__

    return __version__


# -- reading -----------------------------------------------------------------


def _read(path):
    try:
        with safe_open(path, framework="pt") as file:
            metadata = file.metadata() or {}
            tensors = {key: file.get_tensor(key) for key in file.keys()}
    except (SafetensorError, OSError) as exc:
        raise ValueError(f"{path} is not a readable skvae model file: {exc}") from exc
    return metadata, tensors


def _from_json_params(params):
    # Every list-valued parameter of the estimators is a tuple of widths.
    return {k: tuple(v) if isinstance(v, list) else v for k, v in params.items()}


def _restore_attributes(estimator, attributes, tensors, path):
    arrays = {
        key.removeprefix(_ATTRIBUTE): tensor.numpy()
        for key, tensor in tensors.items()
        if key.startswith(_ATTRIBUTE)
    }
    for key in [*attributes, *arrays]:
        if not _ATTRIBUTE_NAME.match(key) or key in _NOT_SAVED:
            raise ValueError(f"{path} holds an unexpected attribute {key!r}.")
    for key, value in attributes.items():
        if isinstance(value, dict):
            value = np.asarray(value["strings"], dtype=object)
        setattr(estimator, key, value)
    for key, value in arrays.items():
        setattr(estimator, key, value)
    n_features = getattr(estimator, "n_features_in_", None)
    if not isinstance(n_features, int) or n_features < 1:
        raise ValueError(f"{path} has no valid n_features_in_.")


def _restore_module(estimator, tensors, path):
    module = estimator._new_module(estimator.n_features_in_, torch.Generator())
    state = {
        key.removeprefix(_MODULE): tensor
        for key, tensor in tensors.items()
        if key.startswith(_MODULE)
    }
    try:
        module.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        raise ValueError(
            f"{path}: the saved weights do not fit a {type(estimator).__name__} "
            f"with the saved parameters: {exc}"
        ) from exc
    try:
        device = estimator._torch_device()
    except ValueError:
        warnings.warn(
            f"{path} was saved with device={estimator.device!r}, which this "
            "machine lacks; the model is loaded on the CPU.",
            UserWarning,
            stacklevel=3,
        )
        device = torch.device("cpu")
    return module.to(device).eval()
