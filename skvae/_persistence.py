"""Saving and loading fitted estimators without executing code on load.

A model file is one safetensors file: the torch module's weights and the
array-valued fitted attributes as tensors, and, in its text metadata, the
estimator's class and parameters and the other fitted attributes as JSON,
a format version and a SHA-256 checksum of all of it. Loading parses JSON
and raw tensors only, unlike ``pickle`` or ``torch.load``, which can run
code stored in the file.

The checksum has no key, so whoever edits a file can recompute it: loading
trusts nothing in a file. It reads the file's bytes once (through no memory
map that another process could truncate under it), parses the header itself
within fixed bounds, checks the parameters and fitted attributes, builds the
network on torch's meta device (shapes without memory) and compares every
declared weight shape and dtype with it, all before it reads the weights.
Whatever is wrong with a file is a ``ValueError`` that names it.

A network given as code (an ``encoder``, ``decoder`` or ``subnet`` class or
callable) is stored as a record of where it came from, never as code, and
never imported from that record: loading such a file takes a template
estimator that brings the code again (see :func:`load`).
"""

import functools
import hashlib
import json
import math
import os
import re
import stat
import sys
import threading
import warnings
from collections.abc import Callable
from contextlib import contextmanager
from numbers import Integral, Real
from typing import NamedTuple

import numpy as np
import torch
from safetensors.torch import save_file
from sklearn.utils.validation import check_is_fitted
from torch.nn.modules import module as torch_module

from ._base import _SEED_BOUND
from ._inn import INNAutoencoder
from ._isometric import IsometricVAE
from ._vae import VAETransformer

FORMAT = "skvae"
# The newest format this skvae reads. Version 2 added the records of networks
# given as code; a file without them is written as version 1, which skvae
# before 2 reads too.
FORMAT_VERSION = 2
_FORMAT_VERSION_WITHOUT_CODE = 1
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
# Parameters that hold code and are never saved, so a file must leave them
# None. Networks given as code are recorded instead (see _code_parameters).
_UNSAVED_CODE_PARAMETERS = ("callbacks",)
# The keys of a record of a network given as code; the last three only for a
# functools.partial.
_RECORD_KEYS = {"module", "qualname", "importable"}
_PARTIAL_KEYS = {"partial", "args", "keywords"}
# Arguments of a partial are recorded as JSON nested at most this deep, well
# within MAX_JSON_DEPTH of the parameters that hold them.
_MAX_ARGUMENT_DEPTH = 3
# safetensors' own bound on the header.
MAX_HEADER_BYTES = 100_000_000
# The header nests 3 levels deep, the parameters 2 and the attributes 3.
# json recurses once per level, so deeper text is refused before parsing.
MAX_JSON_DEPTH = 8
# The safetensors dtypes a file may declare; save writes the first four.
_DTYPES = {
    "F32": torch.float32,
    "F64": torch.float64,
    "I64": torch.int64,
    "BOOL": torch.bool,
    "F16": torch.float16,
    "BF16": torch.bfloat16,
    "I32": torch.int32,
    "I16": torch.int16,
    "I8": torch.int8,
    "U8": torch.uint8,
}
_DTYPE_NAMES = {dtype: name for name, dtype in _DTYPES.items()}


def save(estimator, path):
    """Write a fitted skvae estimator to a file that loads without running code.

    The file holds the estimator's parameters, its fitted attributes and its
    network's weights (see :func:`load`). A network given as code (a class or
    callable passed as ``encoder``, ``decoder`` or ``subnet``) is not stored:
    the file records where it came from, and :func:`load` takes an estimator
    that brings it again. The record of a class or function is its import
    path (module and qualified name); of a ``functools.partial``, the
    import path of the function it wraps, and its arguments when they are
    numbers, strings, None and lists of them; of anything else (a lambda, a
    function defined inside another, a bound method, an object with
    ``__call__``), that it cannot be imported, which :func:`load` accepts
    from any template. The training state (the optimiser and the skorch net)
    is not saved; ``callbacks`` are code and are stored as None, with a
    warning. A fitted attribute that ``fit`` does not set (one a user added)
    is refused with a ``ValueError``, since :func:`load` would refuse the
    file.

    Parameters
    ----------
    estimator : VAETransformer, INNAutoencoder or IsometricVAE
        A fitted estimator.
    path : str or path-like
        File to write, conventionally with the suffix ``.safetensors``.

    Returns
    -------
    None

    Raises
    ------
    TypeError
        If ``estimator`` is not one of the estimators above.
    ValueError
        If a parameter or fitted attribute cannot be stored (a
        ``random_state`` that is not an int or None, an attribute ``fit``
        does not set).

    See Also
    --------
    load : Read the file back.

    Notes
    -----
    A file that records networks given as code is written in format version
    2; other files keep version 1. A skvae that reads only version 1 refuses
    a version 2 file with a message that asks for an upgrade.

    Examples
    --------
    >>> import tempfile, pathlib
    >>> import numpy as np
    >>> from sklearn.datasets import load_iris
    >>> import skvae
    >>> X = load_iris().data
    >>> vae = skvae.VAETransformer(2, encoder_layers=(16,), random_state=0).fit(X)
    >>> path = pathlib.Path(tempfile.mkdtemp()) / "vae.safetensors"
    >>> skvae.save(vae, path)
    >>> again = skvae.load(path)
    >>> np.array_equal(again.transform(X), vae.transform(X))
    True

    A model with networks of its own saves the same way; loading it takes a
    template that brings them:

    >>> from skvae.nn import ConvEncoder, ConvDecoder
    >>> images = np.random.default_rng(0).random(size=(50, 16))  # 4×4 pixels
    >>> conv = skvae.VAETransformer(2, encoder=ConvEncoder, decoder=ConvDecoder,
    ...                             random_state=0).fit(images)
    >>> skvae.save(conv, path)
    >>> template = skvae.VAETransformer(encoder=ConvEncoder, decoder=ConvDecoder)
    >>> again = skvae.load(path, estimator=template)
    >>> np.array_equal(again.transform(images), conv.transform(images))
    True
    """
    name = type(estimator).__name__
    if ESTIMATORS.get(name) is not type(estimator):
        raise TypeError(f"save writes {', '.join(sorted(ESTIMATORS))}; got a {name}.")
    check_is_fitted(estimator)
    params = _json_params(estimator)
    has_code = any(isinstance(value, dict) for value in params.values())
    attributes, arrays = _split_attributes(estimator)
    tensors = {
        _MODULE + key: value.detach().to("cpu").contiguous().clone()
        for key, value in estimator.module_.state_dict().items()
    }
    tensors.update({_ATTRIBUTE + key: value for key, value in arrays.items()})
    version = FORMAT_VERSION if has_code else _FORMAT_VERSION_WITHOUT_CODE
    metadata = {
        "format": FORMAT,
        "format_version": str(version),
        "skvae_version": _skvae_version(),
        "estimator": name,
        "params": json.dumps(params, sort_keys=True),
        "attributes": json.dumps(attributes, sort_keys=True),
    }
    metadata["checksum"] = _checksum(
        metadata, {key: _tensor_record(value) for key, value in tensors.items()}
    )
    save_file(tensors, path, metadata=metadata)


def load(path, *, estimator=None):
    """Read an estimator written by :func:`save`, executing no code from the file.

    The file is read once, into memory, and checked whole before any weight
    becomes a tensor. It is refused with a ``ValueError`` naming it when it
    is not a skvae model file, comes from a newer format version than this
    skvae reads, was modified after it was written (its checksum no longer
    matches), or holds parameters, fitted attributes or weights that do not
    describe a fitted estimator. The checksum catches corruption and edits,
    but it has no key, so it cannot prove who wrote the file, and the other
    checks do not rely on it. Whatever its contents, a file cannot make
    :func:`load` run code, take memory beyond a small multiple of the file's
    size, build more layers than the file holds weights for, or set a
    parameter beyond the bounds ``fit`` accepts (those that size no weight:
    ``max_iter`` and ``n_iter_no_change`` at most 10**6, ``batch_size``
    10**9, ``n_importance_samples`` 10**6).

    A model whose ``encoder``, ``decoder`` or ``subnet`` was given as code (a
    class or callable) needs that code again: the file records only where it
    came from, and :func:`load` never imports a name read from a file. Pass
    an unfitted estimator of the saved class, with those networks, as
    ``estimator``. Its networks replace the records; every other parameter
    is the file's. Each network must be the one recorded: the same import
    path (a class or function defined in a script or notebook, ``__main__``,
    matches one of the same qualified name in any module) and, for a
    ``functools.partial``, the same arguments where the file holds them;
    a record of a lambda or another callable that cannot be imported accepts
    any. The networks are built first on torch's ``meta`` device, which
    allocates nothing, to check every weight's shape and dtype against the
    file; so a network's constructor must run under ``with
    torch.device("meta")``: it may create tensors, but not read their values.
    Once the whole file is checked, the model is built again on the CPU and
    the weights are copied in, so that tensors a network keeps outside its
    saved state (buffers with ``persistent=False``, plain tensor attributes)
    hold their real values.

    Parameters
    ----------
    path : str or path-like
        File written by :func:`save`. Anything other than a regular file
        (a directory, a FIFO, a device) is refused without being read.
    estimator : VAETransformer, INNAutoencoder or IsometricVAE, default=None
        Template for a file that records networks given as code: an
        estimator of the saved class whose ``encoder``, ``decoder`` or
        ``subnet`` are those networks. Only its class and its networks are
        read; it is not changed, and it need not be fitted. A template for a
        file without such records is accepted when it has no networks of its
        own either.

    Returns
    -------
    estimator : VAETransformer, INNAutoencoder or IsometricVAE
        The fitted estimator, with the same outputs as the one saved. Its
        ``net_`` and ``history_`` are not restored: ``fit`` with
        ``warm_start=True`` or ``partial_fit`` continue training from the
        loaded weights with a new optimiser. A model saved with a device
        this machine lacks is loaded on the CPU, with a warning.

    Raises
    ------
    FileNotFoundError
        If there is no file at ``path``; other errors of opening or reading
        it (``PermissionError``...) are raised as by ``open``.
    TypeError
        If ``estimator`` is neither None nor an instance of one of the
        estimators above.
    ValueError
        If the file is not a regular file or not a valid skvae model file;
        if it records networks given as code and no ``estimator`` brings
        them; if ``estimator`` is of another class than the saved one, or
        its networks are not those recorded, or do not build on the meta
        device, or do not match the saved weights' shapes.

    See Also
    --------
    save : Write a fitted estimator.

    Examples
    --------
    >>> import tempfile, pathlib
    >>> import numpy as np
    >>> from sklearn.datasets import load_iris
    >>> import skvae
    >>> X = load_iris().data
    >>> vae = skvae.VAETransformer(2, encoder_layers=(16,), random_state=0).fit(X)
    >>> path = pathlib.Path(tempfile.mkdtemp()) / "vae.safetensors"
    >>> skvae.save(vae, path)
    >>> skvae.load(path).score(X) == vae.score(X)
    True

    With convolutional networks, the file records
    ``skvae.nn.conv.ConvEncoder`` and ``skvae.nn.conv.ConvDecoder``. A
    template brings those classes; the rest (``n_components``, the weights)
    comes from the file:

    >>> from functools import partial
    >>> from skvae.nn import ConvEncoder, ConvDecoder
    >>> images = np.random.default_rng(0).random(size=(50, 16))  # 4×4 pixels
    >>> small = partial(ConvEncoder, channels=(4,))
    >>> conv = skvae.VAETransformer(2, encoder=small, decoder=ConvDecoder,
    ...                             random_state=0).fit(images)
    >>> skvae.save(conv, path)
    >>> template = skvae.VAETransformer(encoder=small, decoder=ConvDecoder)
    >>> again = skvae.load(path, estimator=template)
    >>> again.n_components
    2
    >>> np.array_equal(again.transform(images), conv.transform(images))
    True

    Without the template, the file is refused with a message that says how
    to load it:

    >>> skvae.load(path)  # doctest: +ELLIPSIS
    Traceback (most recent call last):
      ...
    ValueError: ... skvae.load(..., estimator=VAETransformer(encoder=partial(...
    """
    template = _check_template(estimator)
    with _open_regular_file(path) as (file, size):
        header = _read_header(file, size, path)
        cls = _estimator_class(header.metadata, path)
        if template is not None and type(template) is not cls:
            raise ValueError(
                f"{path} holds {_a(cls.__name__)}, but the template estimator is "
                f"of class {type(template).__name__}: pass "
                f"estimator={cls.__name__}(...)."
            )
        unexpected = [
            key for key in header.entries if not key.startswith((_MODULE, _ATTRIBUTE))
        ]
        if unexpected:
            raise ValueError(
                f"{path} holds a tensor {_quote(unexpected[0])} that is neither "
                "a weight nor a fitted attribute."
            )
        estimator = cls()
        networks = _restore_params(estimator, header.metadata, path, template)
        device = _device(estimator, path)
        arrays = _restore_attributes(estimator, header, path)
        module = _meta_module(estimator, header.entries, path, networks)
        data = _read_exactly(file, header.data_size, path, last=True)
    _check_checksum(header, data, path)
    _restore_arrays(estimator, arrays, data, path)
    if networks:
        # Checked whole: now the user's networks are built with real values.
        module = _cpu_module(estimator, path, networks)
    estimator.module_ = _restore_module(
        estimator, module, header.entries, data, path
    ).to(device)
    return estimator


# -- writing -----------------------------------------------------------------


def _json_params(estimator):
    networks = _code_parameters(type(estimator))
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
        if key in networks and value is not None:
            if not callable(value):
                raise ValueError(
                    f"save cannot store the parameter {key}={value!r}: a network "
                    "is a torch.nn.Module class or a callable."
                )
            params[key] = _code_record(value)
        else:
            params[key] = _to_json(value, f"parameter {key}")
    return params


def _code_parameters(cls):
    """The parameters of ``cls`` that take a network as code (``encoder``,
    ``decoder``, ``subnet``...): those whose constraints accept a callable,
    in the order the class declares them."""
    return tuple(
        key
        for key, constraints in cls._parameter_constraints.items()
        if any(constraint is callable for constraint in constraints)
    )


def _code_record(value):
    """What a file records of a network given as code, found without
    importing anything: where it came from, never the code.

    ``{"module", "qualname", "importable"}`` for a class or function, and for
    a ``functools.partial`` those of the function it wraps with
    ``"partial": true`` and its ``"args"`` and ``"keywords"`` as JSON (each
    null when not all of them are plain values). ``importable`` says whether
    the module and qualified name lead back to the object; a lambda, a
    function defined in another, a bound method or an object with
    ``__call__`` cannot be imported (for the last, the record names its
    class).
    """
    target = value.func if isinstance(value, functools.partial) else value
    module = getattr(target, "__module__", None)
    qualname = getattr(target, "__qualname__", None)
    if isinstance(module, str) and isinstance(qualname, str):
        importable = _resolves_to(module, qualname, target)
    else:
        module, qualname = type(target).__module__, type(target).__qualname__
        importable = False
    record = {"module": module, "qualname": qualname, "importable": importable}
    if isinstance(value, functools.partial):
        try:
            args = _plain_json(list(value.args))
            keywords = {str(k): _plain_json(v) for k, v in value.keywords.items()}
        except _NotPlain:
            args = keywords = None
        record.update(partial=True, args=args, keywords=keywords)
    return record


def _resolves_to(module, qualname, target):
    """Whether ``module`` and ``qualname`` lead to ``target`` through the
    modules already imported: this imports nothing."""
    found = sys.modules.get(module)
    if found is None:
        return False
    for part in qualname.split("."):
        if not part.isidentifier():
            return False
        try:
            found = getattr(found, part)
        # A module's own __getattr__ may raise anything.
        except Exception:
            return False
    return found is target


class _NotPlain(Exception):
    pass


def _plain_json(value, depth=0):
    """``value`` as JSON if it is a number, a string, None, or a list or tuple
    of them nested at most _MAX_ARGUMENT_DEPTH deep; else _NotPlain."""
    if value is None or isinstance(value, bool | str):
        return value
    if isinstance(value, Integral):
        return int(value)
    if isinstance(value, Real) and math.isfinite(value):
        return float(value)
    if isinstance(value, list | tuple) and depth < _MAX_ARGUMENT_DEPTH:
        return [_plain_json(v, depth + 1) for v in value]
    raise _NotPlain


def _split_attributes(estimator):
    """Fitted attributes as JSON values and as tensors."""
    specs = _attribute_specs(type(estimator))
    attributes, arrays = {}, {}
    for key, value in vars(estimator).items():
        if key in _NOT_SAVED or not _ATTRIBUTE_NAME.match(key):
            continue
        spec = specs.get(key)
        if spec is None:
            # load refuses attributes it does not know how to check.
            raise ValueError(
                f"save cannot store the fitted attribute {key!r}: skvae model "
                "files hold only the attributes fit sets on a "
                f"{type(estimator).__name__}."
            )
        if isinstance(spec, _Array):
            arrays[key] = torch.from_numpy(np.ascontiguousarray(value)).to(
                _DTYPES[spec.dtype]
            )
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


def _tensor_record(tensor):
    """A tensor as ``_checksum`` reads it: dtype, shape and raw bytes."""
    return (
        tensor.dtype,
        tuple(tensor.shape),
        tensor.reshape(-1).contiguous().view(torch.uint8).numpy(),
    )


def _checksum(metadata, tensors):
    """SHA-256 of the metadata but the checksum, and of each tensor given as
    ``key -> (torch dtype, shape, bytes-like)``."""
    digest = hashlib.sha256()
    for key in sorted(metadata):
        if key != "checksum":
            digest.update(f"{key}={metadata[key]}\n".encode())
    for key in sorted(tensors):
        dtype, shape, data = tensors[key]
        digest.update(f"{key}:{dtype}:{tuple(shape)}\n".encode())
        digest.update(data)
    return digest.hexdigest()


def _skvae_version():
    from . import __version__

    return __version__


# -- reading the file ----------------------------------------------------------


class _Entry(NamedTuple):
    """A tensor as the header declares it; offsets into the data section."""

    dtype: str
    shape: tuple
    start: int
    end: int


class _Header(NamedTuple):
    metadata: dict
    entries: dict
    data_size: int


@contextmanager
def _open_regular_file(path):
    """The regular file at ``path``, open for reading, and its size.

    Anything else is refused before it is read: a FIFO would block until a
    writer came, deaf to Ctrl-C; a device could be endless.
    """
    if not stat.S_ISREG(os.stat(path).st_mode):
        raise ValueError(f"{path} is not a regular file, so not a skvae model file.")
    # O_NONBLOCK: a path swapped for a FIFO after the stat still opens at
    # once, and is refused below, instead of waiting for a writer.
    flags = os.O_RDONLY | getattr(os, "O_BINARY", 0) | getattr(os, "O_NONBLOCK", 0)
    with open(os.open(path, flags), "rb") as file:
        info = os.fstat(file.fileno())
        if not stat.S_ISREG(info.st_mode):
            raise ValueError(
                f"{path} is not a regular file, so not a skvae model file."
            )
        yield file, info.st_size


def _read_exactly(file, size, path, last=False):
    """The next ``size`` bytes; ``last``: they must end the file."""
    data = bytearray(size)
    if file.readinto(data) != size or (last and file.read(1)):
        raise ValueError(f"{path} changed while it was being read.")
    return data


def _read_header(file, size, path):
    """Parse and check the safetensors header; the data stays unread.

    As safetensors does, the tensors must tile the data section exactly, each
    as many bytes as its dtype and shape need; the file's size must be that of
    the header and the data.
    """
    if size < 8:
        raise _unreadable(path, "it is too short to hold a safetensors header")
    n_header = int.from_bytes(_read_exactly(file, 8, path), "little")
    if n_header > min(MAX_HEADER_BYTES, size - 8):
        raise _unreadable(
            path, f"it declares a header of {n_header} bytes in a file of {size}"
        )
    try:
        text = _read_exactly(file, n_header, path).decode("utf-8")
    except UnicodeDecodeError as exc:
        raise _unreadable(path, f"its header is not UTF-8 ({exc})") from exc
    header = _parse_json(text, "header", path)
    if not isinstance(header, dict):
        raise _unreadable(path, "its header is not a JSON object")
    metadata = header.pop("__metadata__", {})
    if not isinstance(metadata, dict) or not all(
        isinstance(value, str) for value in metadata.values()
    ):
        raise _unreadable(path, "its metadata is not a mapping of strings")
    entries = {key: _entry(key, info, size, path) for key, info in header.items()}
    data_size = 0
    for entry in sorted(entries.values(), key=lambda e: (e.start, e.end)):
        if entry.start != data_size:
            raise _unreadable(path, "its tensors overlap or leave gaps")
        data_size = entry.end
    if 8 + n_header + data_size != size:
        raise _unreadable(
            path, "its size does not match the tensors its header declares"
        )
    return _Header(metadata, entries, data_size)


def _entry(key, info, max_bytes, path):
    if not isinstance(info, dict) or set(info) != {"dtype", "shape", "data_offsets"}:
        raise _unreadable(path, f"its header entry {_quote(key)} is malformed")
    dtype, shape, offsets = info["dtype"], info["shape"], info["data_offsets"]
    if not isinstance(dtype, str) or dtype not in _DTYPES:
        raise _unreadable(
            path, f"tensor {_quote(key)} has an unsupported dtype {_quote(dtype)}"
        )
    if not isinstance(shape, list) or not all(_is_int(n) and n >= 0 for n in shape):
        raise _unreadable(path, f"tensor {_quote(key)} has an invalid shape")
    if not (
        isinstance(offsets, list)
        and len(offsets) == 2
        and all(_is_int(n) for n in offsets)
        and 0 <= offsets[0] <= offsets[1]
    ):
        raise _unreadable(path, f"tensor {_quote(key)} has invalid data offsets")
    n_elements = _n_elements(shape, max_bytes)
    if (
        n_elements is None
        or n_elements * _DTYPES[dtype].itemsize != offsets[1] - offsets[0]
    ):
        raise _unreadable(
            path, f"tensor {_quote(key)} does not span the bytes its shape needs"
        )
    return _Entry(dtype, tuple(shape), offsets[0], offsets[1])


def _n_elements(shape, bound):
    """The product of ``shape``, or None beyond ``bound``: multiplying out
    thousands of huge dimensions would take minutes."""
    if 0 in shape:
        return 0
    product = 1
    for n in shape:
        product *= n
        if product > bound:
            return None
    return product


# The strings of JSON text, escapes included; an unterminated one runs to the
# end, so that every match consumes what it scans (linear time).
_JSON_STRING = re.compile(r'"[^"\\]*(?:\\(?:.|\Z)[^"\\]*)*(?:"|\Z)', re.DOTALL)
_NOT_BRACKET = re.compile(r"[^\[\]{}]+")
_INNERMOST = re.compile(r"\[\]|\{\}")


def _parse_json(text, what, path):
    """The JSON value of ``text``, refused if nested over MAX_JSON_DEPTH.

    The depth is measured on the brackets outside strings, removing the
    innermost pairs once per level, before json (which recurses once per
    level) sees the text. Repeated keys are refused: a reader that kept the
    first and one that kept the last would disagree.
    """
    brackets = _NOT_BRACKET.sub("", _JSON_STRING.sub("", text))
    for _ in range(MAX_JSON_DEPTH):
        brackets = _INNERMOST.sub("", brackets)
    if brackets:
        raise _unreadable(
            path,
            f"its {what} JSON is unbalanced or nested over {MAX_JSON_DEPTH} levels",
        )
    try:
        return json.loads(text, object_pairs_hook=_unique_keys)
    except ValueError as exc:
        raise _unreadable(
            path, f"its {what} is not valid JSON ({_shorten(str(exc))})"
        ) from exc


def _unique_keys(pairs):
    value = dict(pairs)
    if len(value) != len(pairs):
        raise ValueError("a key appears twice in one object")
    return value


def _tensor(data, entry):
    """A copy of one tensor's bytes, in its dtype and shape."""
    dtype = _DTYPES[entry.dtype]
    if entry.start == entry.end:
        return torch.empty(entry.shape, dtype=dtype, device="cpu")
    raw = torch.frombuffer(
        data, dtype=torch.uint8, count=entry.end - entry.start, offset=entry.start
    ).clone()
    if dtype == torch.bool and bool((raw > 1).any()):
        raise ValueError("holds booleans that are neither 0 nor 1")
    return raw.view(dtype).reshape(entry.shape)


# -- checking the contents -----------------------------------------------------


def _estimator_class(metadata, path):
    """The estimator class the metadata names, once format and version pass."""
    version = metadata.get("format_version", "")
    if metadata.get("format") != FORMAT or not re.fullmatch(r"[0-9]{1,9}", version):
        raise ValueError(f"{path} is a safetensors file but not a skvae model file.")
    if int(version) > FORMAT_VERSION:
        raise ValueError(
            f"{path} was written in skvae model format {version} (by skvae "
            f"{_shorten(metadata.get('skvae_version', '?'))}); this skvae "
            f"{_skvae_version()} reads formats up to {FORMAT_VERSION}. Upgrade "
            "skvae to load it."
        )
    cls = ESTIMATORS.get(metadata.get("estimator"))
    if cls is None:
        raise ValueError(
            f"{path} names the estimator {_quote(metadata.get('estimator'))}; "
            f"skvae loads only {', '.join(sorted(ESTIMATORS))}."
        )
    return cls


def _check_checksum(header, data, path):
    view = memoryview(data)
    tensors = {
        key: (_DTYPES[entry.dtype], entry.shape, view[entry.start : entry.end])
        for key, entry in header.entries.items()
    }
    if header.metadata.get("checksum") != _checksum(header.metadata, tensors):
        raise ValueError(
            f"{path} was modified after it was written: its checksum does not "
            "match its contents. Refusing to load it."
        )


def _metadata_json(metadata, key, path):
    if key not in metadata:
        raise ValueError(f"{path} is a skvae model file without its {key}.")
    value = _parse_json(metadata[key], key, path)
    if not isinstance(value, dict):
        raise _unreadable(path, f"its {key} JSON is not an object")
    return value


def _restore_params(estimator, metadata, path, template):
    """Set the file's parameters on ``estimator`` and validate them as fit
    would; infinite and NaN numbers and stored code are refused too.

    A network recorded as code is taken from ``template``, once its record
    is checked against the template's network. Returns the names of those
    parameters.
    """
    params = _metadata_json(metadata, "params", path)
    for key in _UNSAVED_CODE_PARAMETERS:
        if params.get(key) is not None:
            raise ValueError(
                f"{path} holds a value for {key}, which is code and never saved."
            )
    for key, value in params.items():
        if not _finite(value):
            raise ValueError(
                f"{path} holds invalid parameters: {_quote(key)} is not finite."
            )
    networks = _networks(type(estimator), params, path, template)
    params.update(networks)
    try:
        estimator.set_params(
            **{k: tuple(v) if isinstance(v, list) else v for k, v in params.items()}
        )
        estimator._validate_params()
    except (TypeError, ValueError) as exc:
        raise ValueError(
            f"{path} holds invalid parameters: {_shorten(str(exc), 300)}"
        ) from exc
    return list(networks)


def _check_template(template):
    if template is None or type(template) in ESTIMATORS.values():
        return template
    what = (
        f"the class {template.__name__}"
        if isinstance(template, type)
        else f"a {type(template).__name__}"
    )
    raise TypeError(
        "estimator must be None or an unfitted "
        f"{', '.join(sorted(ESTIMATORS))} whose networks are those of the saved "
        f"model, e.g. VAETransformer(encoder=MyEncoder); got {what}."
    )


def _networks(cls, params, path, template):
    """The template's networks that replace the records of the file's
    ``params``, after checking each record against them.

    Nothing read from a record is imported or looked up: records are
    compared as strings with what the template's objects say of themselves.
    """
    records = {}
    for key in _code_parameters(cls):
        value = params.get(key)
        if value is not None:
            if not isinstance(value, dict):
                raise ValueError(
                    f"{path} holds invalid parameters: {key} is "
                    f"{_quote(value)}, neither None nor a record of a network."
                )
            records[key] = _check_record(value, key, path)
    if template is None:
        if records:
            raise ValueError(_needs_template(cls, records, path))
        return {}
    theirs = template.get_params(deep=False)
    networks = {}
    for key in _code_parameters(cls):
        recorded, network = records.get(key), theirs.get(key)
        if recorded is None and network is None:
            continue
        if recorded is None:
            raise ValueError(
                f"{path} holds {_a(cls.__name__)} whose {key} is the built-in one "
                f"(None), but the template's is {_describe_object(network)}. "
                f"Pass a template with {key}=None."
            )
        if network is None:
            raise ValueError(
                f"{path} holds {_a(cls.__name__)} whose {key} is "
                f"{_describe(recorded)}, but the template's {key} is None. "
                f"Pass it: estimator={cls.__name__}({key}={_hint(recorded)}, ...)."
            )
        if not callable(network):
            raise ValueError(
                f"{path}: the template's {key}={network!r} is not a network: a "
                "torch.nn.Module class or a callable."
            )
        template_record = _code_record(network)
        if not _same_code(recorded, template_record):
            raise ValueError(
                f"{path} holds {_a(cls.__name__)} whose {key} is "
                f"{_describe(recorded)}, but the template's {key} is "
                f"{_describe(template_record)}. Pass the network the model was "
                f"saved with: estimator={cls.__name__}({key}={_hint(recorded)}, "
                "...)."
            )
        networks[key] = network
    return networks


def _check_record(value, key, path):
    """The record of a network in a file, checked to be of the form
    :func:`_code_record` writes; its names are only ever compared."""
    partial = value.get("partial", False)
    keys = _RECORD_KEYS | (_PARTIAL_KEYS if partial is True else set())
    if (
        set(value) != keys
        or not isinstance(value["module"], str)
        or not isinstance(value["qualname"], str)
        or not isinstance(value["importable"], bool)
        or (
            partial is True
            and not (
                isinstance(value["args"], list | None)
                and isinstance(value["keywords"], dict | None)
            )
        )
    ):
        raise ValueError(
            f"{path} holds invalid parameters: {key} is {_quote(value)}, not a "
            "record of a network."
        )
    return value


def _same_code(recorded, template):
    """Whether a template's network (its record) is the one a file records."""
    if not recorded["importable"]:
        return True
    if not template["importable"] or recorded["qualname"] != template["qualname"]:
        return False
    modules = recorded["module"], template["module"]
    # A script or notebook's __main__ is no import path.
    if "__main__" not in modules and modules[0] != modules[1]:
        return False
    if recorded.get("partial", False) != template.get("partial", False):
        return False
    return all(
        recorded[key] is None or recorded[key] == template[key]
        for key in ("args", "keywords")
        if key in recorded
    )


def _describe(record):
    """A record, as a message shows it."""
    name = f"{record['module']}.{record['qualname']}"
    if not record["importable"]:
        return _shorten(f"a callable that cannot be imported ({name})", 200)
    if record.get("partial"):
        return _shorten(f"functools.partial({name}{_arguments(record)})", 200)
    return _shorten(name, 200)


def _hint(record):
    """What a user writes to pass the network a record describes."""
    if not record["importable"]:
        return "<your network>"
    name = record["qualname"]
    if record.get("partial"):
        return _shorten(f"partial({name}{_arguments(record)})", 200)
    return _shorten(name, 200)


def _arguments(record):
    if record["args"] is None or record["keywords"] is None:
        return ", ..."
    # JSON text: a file's strings cannot break out of their quotes.
    args = [json.dumps(arg) for arg in record["args"]]
    args += [f"{k}={json.dumps(v)}" for k, v in record["keywords"].items()]
    return "".join(f", {arg}" for arg in args)


def _describe_object(network):
    return _describe(_code_record(network)) if callable(network) else repr(network)


def _needs_template(cls, records, path):
    described = " and ".join(
        f"{key} is {_describe(record)}" for key, record in records.items()
    )
    hint = ", ".join(f"{key}={_hint(record)}" for key, record in records.items())
    return (
        f"{path} holds {_a(cls.__name__)} whose {described}, given as code, "
        "which load never imports from a file. Pass an estimator that brings "
        f"{'them' if len(records) > 1 else 'it'} as a template: "
        f"skvae.load({str(path)!r}, estimator={cls.__name__}({hint}))."
    )


def _device(estimator, path):
    """The torch device to load on: the saved one if this machine has it,
    else the CPU, with a warning."""
    if isinstance(estimator.device, str) and estimator.device == "auto":
        return estimator._torch_device()
    try:
        device = torch.device(estimator.device)
    except (RuntimeError, TypeError, ValueError) as exc:
        raise ValueError(
            f"{path} holds device={_quote(estimator.device)}, which is not a "
            "torch device."
        ) from exc
    if device.type == "meta":
        raise ValueError(f"{path} holds device='meta', which holds no values.")
    try:
        torch.empty(0, device=device)
    # Each backend that is absent says so in its own way (AssertionError,
    # ImportError, NotImplementedError, RuntimeError).
    except Exception:
        warnings.warn(
            f"{path} was saved with device={_quote(estimator.device)}, which "
            "this machine lacks; the model is loaded on the CPU.",
            UserWarning,
            stacklevel=3,
        )
        return torch.device("cpu")
    return device


class _Json(NamedTuple):
    """A fitted attribute stored as JSON; ``check(value, estimator)`` returns
    the value to set or raises ValueError saying what it must be."""

    check: Callable


class _Array(NamedTuple):
    """A fitted attribute stored as a tensor of shape ``(n,)`` and safetensors
    dtype ``dtype``, where ``n`` is the estimator's attribute ``length``;
    ``check(array)`` says whether its values are ``valid`` (a description)."""

    dtype: str
    check: Callable
    valid: str
    length: str = "n_components"


def _attribute_specs(cls):
    """The fitted attributes a ``cls`` file holds, in the order they are
    checked: later checks read earlier attributes."""
    specs = {
        "n_features_in_": _Json(_int_at_least(1)),
        "feature_names_in_": _Json(_feature_names),
        "n_iter_": _Json(_int_at_least(0)),
        "loss_curve_": _Json(_loss_curve),
        "validation_loss_curve_": _Json(_optional_loss_curve),
        "_score_seed": _Json(_seed),
    }
    non_negative = (lambda a: bool(np.all(a >= 0)), "non-negative")
    moments = dict(
        n_samples_seen_=_Json(_int_at_least(1)),
        mean_=_Array(
            "F64",
            lambda a: bool(np.all(np.isfinite(a))),
            "finite",
            "n_features_in_",
        ),
        var_=_Array("F64", *non_negative, "n_features_in_"),
        noise_variance_=_Array(
            "F64", lambda a: bool(np.all(a > 0)), "positive", "n_features_in_"
        ),
    )
    if cls is VAETransformer:
        specs.update(
            latent_activity_=_Array("F64", *non_negative),
            collapsed_=_Array("BOOL", lambda a: True, "booleans"),
            **moments,
        )
    if cls is IsometricVAE:
        specs.update(
            beta_=_Json(_positive_float),
            **moments,
            components_order_=_Array(
                "I64", _is_permutation, "a permutation of range(n_components)"
            ),
            explained_variance_=_Array("F64", *non_negative),
            # NaN when the training rows had no variance.
            explained_variance_ratio_=_Array(
                "F64",
                lambda a: bool(np.all((a >= 0) | np.isnan(a))),
                "non-negative or NaN",
            ),
            # _tensor refuses bytes other than 0 and 1.
            collapsed_=_Array("BOOL", lambda a: True, "booleans"),
        )
    return specs


# Saved only when fit saw string column names, and only when the decoder
# has one variance per feature.
_OPTIONAL_ATTRIBUTES = {"feature_names_in_", "noise_variance_"}


def _restore_attributes(estimator, header, path):
    """Check the file's fitted attributes and set those stored as JSON.

    Returns the entries of those stored as tensors, their dtypes and shapes
    checked, for :func:`_restore_arrays` once the data is read.
    """
    specs = _attribute_specs(type(estimator))
    values = _metadata_json(header.metadata, "attributes", path)
    arrays = {
        key.removeprefix(_ATTRIBUTE): entry
        for key, entry in header.entries.items()
        if key.startswith(_ATTRIBUTE)
    }
    for key in [*values, *arrays]:
        spec = specs.get(key)
        if spec is None or isinstance(spec, _Array) != (key in arrays):
            raise ValueError(f"{path} holds an unexpected attribute {_quote(key)}.")
        if key in values and key in arrays:
            raise ValueError(f"{path} holds the attribute {key!r} twice.")
    missing = set(specs) - set(values) - set(arrays) - _OPTIONAL_ATTRIBUTES
    if missing:
        raise ValueError(f"{path} lacks the fitted attribute {sorted(missing)[0]!r}.")
    for key, spec in specs.items():
        if key in values:
            try:
                setattr(estimator, key, spec.check(values[key], estimator))
            except ValueError as exc:
                raise ValueError(f"{path} holds an invalid {key}: {exc}.") from exc
        elif key in arrays:
            entry = arrays[key]
            length = getattr(estimator, spec.length)
            if entry.dtype != spec.dtype or entry.shape != (length,):
                raise ValueError(
                    f"{path} holds an invalid {key}: {entry.dtype} of shape "
                    f"{_quote(entry.shape)}, where {spec.length}={length} asks "
                    f"for {spec.dtype} of shape ({length},)."
                )
    return arrays


def _restore_arrays(estimator, arrays, data, path):
    specs = _attribute_specs(type(estimator))
    for key, entry in arrays.items():
        try:
            array = _tensor(data, entry).numpy()
        except ValueError as exc:
            raise ValueError(f"{path} holds an invalid {key}: it {exc}.") from exc
        if not specs[key].check(array):
            raise ValueError(
                f"{path} holds an invalid {key}: its values are not {specs[key].valid}."
            )
        setattr(estimator, key, array)


def _int_at_least(low):
    def check(value, estimator):
        if not _is_int(value) or value < low:
            raise ValueError(f"must be an integer of at least {low}")
        return value

    return check


def _positive_float(value, estimator):
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError("must be a number")
    if not (math.isfinite(value) and value > 0):
        raise ValueError("must be a positive finite number")
    return float(value)


def _seed(value, estimator):
    if not _is_int(value) or not 0 <= value < _SEED_BOUND:
        raise ValueError(f"must be an integer in [0, {_SEED_BOUND})")
    return value


def _feature_names(value, estimator):
    names = value.get("strings") if isinstance(value, dict) else None
    if (
        not isinstance(names, list)
        or len(value) != 1
        or len(names) != estimator.n_features_in_
        or not all(isinstance(name, str) for name in names)
    ):
        raise ValueError(f"must be {estimator.n_features_in_} strings")
    return np.asarray(names, dtype=object)


def _loss_curve(value, estimator):
    # Shorter than n_iter_ if training was interrupted within an epoch.
    if (
        not isinstance(value, list)
        or len(value) > estimator.n_iter_
        or not all(_is_number(v) and math.isfinite(v) for v in value)
    ):
        raise ValueError("must be a list of at most n_iter_ finite numbers")
    return [float(v) for v in value]


def _optional_loss_curve(value, estimator):
    return None if value is None else _loss_curve(value, estimator)


def _is_permutation(array):
    return np.array_equal(np.sort(array), np.arange(len(array)))


@contextmanager
def _registrations_at_most(limit):
    """Stop a module being built in this thread at its ``limit``-th
    submodule, parameter or buffer.

    Even on the meta device each layer costs time to build, and a file's
    parameters can describe any number of layers: the skvae networks
    register about two of these per tensor of their state.
    """
    thread = threading.get_ident()
    count = 0

    def count_one(*args):
        nonlocal count
        if threading.get_ident() == thread:
            count += 1
            if count > limit:
                raise _TooManyLayers

    handles = [
        register(count_one)
        for register in (
            torch_module.register_module_module_registration_hook,
            torch_module.register_module_parameter_registration_hook,
            torch_module.register_module_buffer_registration_hook,
        )
    ]
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()


class _TooManyLayers(Exception):
    pass


def _meta_module(estimator, entries, path, networks=()):
    """The estimator's untrained module on the meta device, with every
    state tensor checked against the file's declared dtype and shape.

    ``networks``: the parameters whose networks a template brought.
    """
    name = type(estimator).__name__
    declared = {
        key.removeprefix(_MODULE): entry
        for key, entry in entries.items()
        if key.startswith(_MODULE)
    }
    generator = torch.Generator()
    try:
        with torch.device("meta"), _registrations_at_most(4 * len(declared) + 64):
            module = estimator._new_module(estimator.n_features_in_, generator)
    except _TooManyLayers:
        raise ValueError(
            f"{path}: its parameters describe a network with more layers than "
            "the file holds weights for."
        ) from None
    # The parameters come from the file: whatever they make the build raise
    # means the file describes no valid network, or, with a template's
    # networks, that those do not build on the meta device.
    except Exception as exc:
        if networks:
            raise ValueError(
                f"{path}: the {name} of its parameters, with the template's "
                f"{' and '.join(networks)}, does not build on torch's meta device "
                f"({type(exc).__name__}: {_shorten(str(exc), 300)}). load "
                "checks the shapes of a file's weights on the meta device, "
                "before reading them, so a network passed to it must build "
                "under `with torch.device('meta')`: creating tensors, not "
                "reading their values."
            ) from exc
        raise ValueError(
            f"{path}: its parameters describe no valid {name} network: "
            f"{_shorten(str(exc), 300)}"
        ) from exc
    expected = module.state_dict()
    problems = [f"unexpected {key}" for key in sorted(declared.keys() - expected)]
    problems += [f"missing {key}" for key in sorted(expected.keys() - declared)]
    for key in sorted(declared.keys() & expected.keys()):
        entry, tensor = declared[key], expected[key]
        if _DTYPES[entry.dtype] != tensor.dtype or entry.shape != tuple(tensor.shape):
            problems.append(
                f"{key} is {entry.dtype} of shape {_quote(entry.shape)}, not "
                f"{_DTYPE_NAMES.get(tensor.dtype, tensor.dtype)} of shape "
                f"{tuple(tensor.shape)}"
            )
    if problems:
        described = f"the {name} that the saved parameters describe" + (
            f" with the template's {' and '.join(networks)}" if networks else ""
        )
        raise ValueError(
            f"{path}: the saved weights do not fit {described}: "
            f"{'; '.join(problems[:5])}"
            + (f" (and {len(problems) - 5} more)" if len(problems) > 5 else "")
        )
    return module


def _cpu_module(estimator, path, networks):
    """The estimator's untrained module on the CPU, built once the file has
    passed every check: a template's networks may keep tensors outside their
    state (non-persistent buffers, plain attributes), which a module built
    on the meta device would leave without values."""
    try:
        return estimator._new_module(estimator.n_features_in_, torch.Generator())
    except Exception as exc:
        raise ValueError(
            f"{path}: the template's {' and '.join(networks)} built on the meta "
            "device but not on the CPU "
            f"({type(exc).__name__}: {_shorten(str(exc), 300)})."
        ) from exc


def _restore_module(estimator, module, entries, data, path):
    """Fill the meta ``module`` with the file's weights, each a finite
    number (a fitted model never holds NaN or infinity)."""
    state = {}
    for key, entry in entries.items():
        if not key.startswith(_MODULE):
            continue
        try:
            tensor = _tensor(data, entry)
        except ValueError as exc:
            raise ValueError(f"{path}: the weight {key} {exc}.") from exc
        if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
            raise ValueError(f"{path} holds non-finite values in the weight {key}.")
        state[key.removeprefix(_MODULE)] = tensor
    try:
        module.load_state_dict(state, strict=True, assign=True)
    except RuntimeError as exc:
        raise ValueError(
            f"{path}: the saved weights do not fit the "
            f"{type(estimator).__name__} that the saved parameters describe: {exc}"
        ) from exc
    return module.eval()


# -- small helpers -------------------------------------------------------------


def _a(name):
    """``name`` with its indefinite article."""
    return f"{'an' if name[:1] in 'AEIOU' else 'a'} {name}"


def _unreadable(path, reason):
    return ValueError(f"{path} is not a readable skvae model file: {reason}.")


def _shorten(text, limit=80):
    """Text from a file, cut short for a message: the file sets its length."""
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _quote(value):
    return _shorten(repr(value))


def _is_int(value):
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value):
    return isinstance(value, int | float) and not isinstance(value, bool)


def _finite(value):
    if isinstance(value, float):
        return math.isfinite(value)
    if isinstance(value, list):
        return all(_finite(v) for v in value)
    if isinstance(value, dict):
        return all(_finite(v) for v in value.values())
    return True
