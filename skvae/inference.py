"""Evaluating a fitted estimator's torch module on NumPy rows, in chunks.

Every method of the estimators that runs the fitted model (``transform``,
``inverse_transform``, ``score_samples``, ``sample``...) and every function of
:mod:`skvae.diagnostics` goes through :class:`FittedModule`: it holds the
module in the data's floating-point dtype and maps a function over chunks of
rows whose size comes from the measured cost of that function, so the memory
of inference is bounded whatever the network inside and however many rows
there are. Use it to evaluate your own functions of a fitted model the same
way.
"""

import copy
import math

import numpy as np
import scipy.sparse as sp
import torch
from sklearn.utils.validation import check_is_fitted
from torch.overrides import TorchFunctionMode

__all__ = ["FittedModule"]

# Floats held at once by one inference chunk: about 16 MiB in float32,
# large enough to keep matrix products efficient. An estimator may override
# it with an ``_inference_budget`` attribute.
INFERENCE_BUDGET = 2**22
# Rows the cost of a function is measured on.
_PROBE_ROWS = 2


class FittedModule:
    """A fitted estimator's torch module, ready to evaluate on NumPy rows.

    Training runs in float32. A float32 ``FittedModule`` holds the fitted
    module itself; a float64 one holds a float64 copy, made once. Matrix
    products round the rows that BLAS leaves over from its blocks of rows
    differently, so a row's output shifts in its last bits with the chunk it
    lands in: by up to 4e-7 of the output's scale in float32, more than the
    1e-7 scikit-learn tolerates between a row's result alone and in a batch.
    The float64 copy keeps the shift within 1e-13 (see the developer notes).

    Parameters
    ----------
    estimator : fitted skvae estimator
        Any estimator with a fitted ``module_``.
    dtype : {numpy.float32, numpy.float64}, default=numpy.float64
        Floating-point type to evaluate in: that of the data.

    Attributes
    ----------
    module : skvae.nn.LatentVariableModel
        The fitted module, in ``dtype``, on the estimator's device. Do not
        change its weights: with float32 it is the estimator's own
        ``module_``.
    dtype : numpy.dtype
        The floating-point type of the module and of the rows it is given.
    device : torch.device
        Where the module's tensors live.
    budget : int
        Floats that the tensors made by one chunk may hold together.

    See Also
    --------
    skvae.diagnostics : Diagnostics of fitted models, built on this class.

    Examples
    --------
    >>> import numpy as np
    >>> from sklearn.datasets import load_iris
    >>> from skvae import VAETransformer
    >>> from skvae.inference import FittedModule
    >>> X = load_iris().data
    >>> vae = VAETransformer(2, encoder_layers=(16,), random_state=0).fit(X)
    >>> fitted = FittedModule(vae, X.dtype)
    >>> mean, log_var = fitted.map_rows(lambda m, x: m.posterior(x), X)
    >>> mean.shape, log_var.dtype
    ((150, 2), dtype('float64'))
    >>> np.array_equal(mean, vae.transform(X))
    True
    """

    def __init__(self, estimator, dtype=np.float64):
        check_is_fitted(estimator)
        dtype = np.dtype(dtype)
        if dtype not in (np.float32, np.float64):
            raise ValueError(f"dtype must be float32 or float64, got {dtype}.")
        module = estimator.module_
        if dtype == np.float64:
            module = copy.deepcopy(module).to(torch.float64)
        self.module = module
        self.dtype = dtype
        self.device = _device_of(module)
        self.budget = getattr(estimator, "_inference_budget", INFERENCE_BUDGET)
        self._name = type(estimator).__name__

    def tensor(self, X):
        """Rows of an array or sparse matrix as a tensor in ``dtype`` on ``device``.

        Parameters
        ----------
        X : array-like or sparse matrix of shape (n_rows, n_columns)
            Rows; sparse rows are densified.

        Returns
        -------
        x : torch.Tensor of shape (n_rows, n_columns)
            A copy: torch cannot share memory with read-only arrays
            (memmaps), nor hold the negative strides of views such as
            ``X[::-1]``.
        """
        return as_tensor(X, self.device, self.dtype)

    def floats_per_row(self, fn, X):
        """Elements of the tensors ``fn(module, x)`` makes per row.

        Measured on the first rows of ``X``: every tensor a torch function
        returns counts, views included, so it bounds from above the memory
        ``fn`` needs per row, whatever network runs inside.

        Parameters
        ----------
        fn : callable
            ``fn(module, x)`` with ``x`` a tensor of rows.
        X : array-like or sparse matrix of shape (n_rows, n_columns)
            Rows like those ``fn`` will be given; two are used.

        Returns
        -------
        floats : int
            Elements per row, rounded up.
        """
        probe = X[:_PROBE_ROWS]
        n_rows = probe.shape[0]
        x = self.tensor(probe)
        return _floats_per_row(lambda: fn(self.module, x), n_rows)

    def rows_per_chunk(self, floats_per_row):
        """Rows a chunk may hold when each row makes ``floats_per_row`` floats.

        Parameters
        ----------
        floats_per_row : int
            Cost of one row, as :meth:`floats_per_row` measures it.

        Returns
        -------
        rows : int
            ``budget // floats_per_row``, at least 1.
        """
        return max(1, self.budget // max(1, int(floats_per_row)))

    def map_rows(
        self, fn, X, *, floats_per_row=None, out_dtype=None, check_finite=True
    ):
        """Evaluate ``fn(module, x)`` over chunks of the rows of ``X``.

        Each chunk's output is written into one preallocated result as it
        comes, so memory holds one chunk's tensors, the input and the
        output. ``fn`` runs under :func:`torch.no_grad` (``torch.func``
        transforms still differentiate inside it; wrap explicit autograd in
        :func:`torch.enable_grad`), and must treat rows independently.

        Parameters
        ----------
        fn : callable
            ``fn(module, x)``, with ``x`` a tensor of rows in ``dtype``,
            returning a tensor, or a tuple of tensors, with one row per row
            of ``x``.
        X : array-like or sparse matrix of shape (n_rows, n_columns)
            Rows to map.
        floats_per_row : int, default=None
            Cost of ``fn`` per row, in floats; None measures it with
            :meth:`floats_per_row`. Give it when running ``fn`` once is not
            a measure of its memory (``torch.func`` transforms hide their
            batch dimensions from the count) or would take long.
        out_dtype : numpy dtype, default=None
            Type of the result; None is ``dtype``.
        check_finite : bool, default=True
            Raise a ``ValueError`` naming the first row whose output is not
            finite.

        Returns
        -------
        result : ndarray or tuple of ndarray
            The outputs of the chunks joined in row order, one array for
            each tensor ``fn`` returns.
        """
        if floats_per_row is None:
            floats_per_row = self.floats_per_row(fn, X)
        rows = self.rows_per_chunk(floats_per_row)
        n_rows = X.shape[0]

        def chunk(start, stop):
            return fn(self.module, self.tensor(X[start:stop]))

        return self.map_chunks(chunk, n_rows, rows, out_dtype, check_finite)

    def map_chunks(self, fn, n_rows, rows, out_dtype=None, check_finite=True):
        """Join ``fn(start, stop)`` over consecutive ranges of ``rows`` rows.

        The loop behind :meth:`map_rows`, for outputs made without input
        rows (such as draws from the model).

        Parameters
        ----------
        fn : callable
            ``fn(start, stop)`` returning a tensor, or a tuple of tensors,
            of ``stop - start`` rows.
        n_rows : int
            Rows in all.
        rows : int
            Rows per chunk (see :meth:`rows_per_chunk`).
        out_dtype : numpy dtype, default=None
            Type of the result; None is ``dtype``.
        check_finite : bool, default=True
            Raise a ``ValueError`` for outputs that are not finite.

        Returns
        -------
        result : ndarray or tuple of ndarray
            One array for each tensor ``fn`` returns.
        """
        out_dtype = self.dtype if out_dtype is None else np.dtype(out_dtype)
        with torch.no_grad():
            chunks = (
                fn(start, min(start + rows, n_rows)) for start in range(0, n_rows, rows)
            )
            return self._gather(chunks, n_rows, out_dtype, check_finite)

    def _gather(self, chunks, n_rows, dtype, check_finite):
        """The outputs of ``chunks``, in row order, as arrays of ``dtype``.

        The arrays are allocated once and each chunk's output is copied into
        them as it comes. Chunk outputs kept until a final join fragment
        glibc's heap: each sits among the large buffers its chunk freed,
        which later chunks then cannot reuse, so the resident memory grows
        with the number of chunks. Scoring a million rows held 2.2 GiB
        instead of about 40 MiB while the kept outputs were tensors, and
        ``INNAutoencoder.transform`` still grew by 10 MiB a chunk with NumPy
        copies (benchmarks/bench_scale.py memory and transform). A join
        would also double the output's memory.
        """
        outs, single, first_bad, n_bad, start = None, False, None, 0, 0
        for chunk in chunks:
            if isinstance(chunk, torch.Tensor):
                chunk, single = (chunk,), True
            if outs is None:
                outs = [np.empty((n_rows, *t.shape[1:]), dtype=dtype) for t in chunk]
            stop = start + len(chunk[0])
            for out, tensor in zip(outs, chunk, strict=True):
                out[start:stop] = tensor.detach().cpu().numpy()
                if not check_finite:
                    continue
                part = out[start:stop].reshape(stop - start, -1)
                bad = ~np.isfinite(part).all(axis=1)
                if first_bad is None and bad.any():
                    first_bad = start + np.flatnonzero(bad)[0]
                n_bad += int(bad.sum())
            start = stop
        if n_bad:
            raise ValueError(
                f"{self._name} produced non-finite values for "
                f"{n_bad} row(s) (first: row {first_bad}). The "
                "input is probably far outside the range of the training data; "
                "scale it as the training data was scaled."
            )
        if outs is None:
            raise ValueError("No rows to evaluate.")
        return outs[0] if single else tuple(outs)


def as_tensor(X, device, dtype):
    """A C-ordered tensor copy of the rows of ``X`` (array or sparse matrix)."""
    if sp.issparse(X):
        X = X.toarray()
    X = np.array(X, dtype=dtype, order="C", copy=True)
    return torch.from_numpy(X).to(device)


def _device_of(module):
    tensor = next(module.parameters(), None)
    if tensor is None:
        tensor = next(module.buffers(), None)
    return torch.device("cpu") if tensor is None else tensor.device


class _FloatCounter(TorchFunctionMode):
    """Counts the elements of every tensor that torch functions return."""

    def __init__(self):
        super().__init__()
        self.floats = 0

    def __torch_function__(self, func, types, args=(), kwargs=None):
        result = func(*args, **(kwargs or {}))
        for value in result if isinstance(result, tuple | list) else (result,):
            if isinstance(value, torch.Tensor):
                self.floats += value.numel()
        return result


def _floats_per_row(run, n_rows):
    """Elements made per row by ``run()`` on ``n_rows`` rows."""
    counter = _FloatCounter()
    with torch.no_grad(), counter:
        run()
    return math.ceil(counter.floats / max(1, n_rows))
