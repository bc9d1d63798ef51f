"""The scikit-learn side shared by every skvae estimator."""

import copy
import warnings
from abc import abstractmethod
from numbers import Integral, Real

import numpy as np
import scipy.sparse as sp
import torch
from sklearn.base import (
    BaseEstimator,
    ClassNamePrefixFeaturesOutMixin,
    DensityMixin,
    TransformerMixin,
    _fit_context,
)
from sklearn.exceptions import ConvergenceWarning
from sklearn.utils import check_random_state, check_scalar
from sklearn.utils._param_validation import Interval
from sklearn.utils.validation import check_array, check_is_fitted, validate_data

from ._training import build_net, prepare_run, stopped_early

FLOAT_DTYPES = (np.float64, np.float32)
_SEED_BOUND = np.iinfo(np.int32).max
# Bounds of the integer parameters that size no weight, far above any useful
# value: skvae.load validates a file's parameters as fit does, and these keep
# a file from asking for unbounded work. (The weights a file holds bound the
# network sizes.)
MAX_EPOCHS = 10**6
MAX_BATCH_SIZE = 10**9
MAX_IMPORTANCE_SAMPLES = 10**6


class BaseLatentEstimator(
    ClassNamePrefixFeaturesOutMixin, TransformerMixin, DensityMixin, BaseEstimator
):
    """Estimator plumbing around a :class:`~skvae.nn.LatentVariableModel`.

    Subclasses declare their own parameters and implement
    :meth:`_build_module`; validation, seeding, training, chunked inference
    and the scikit-learn tags live here.
    """

    _parameter_constraints: dict = {
        "n_components": [Interval(Integral, 1, None, closed="left")],
        "max_iter": [Interval(Integral, 1, MAX_EPOCHS, closed="both")],
        "batch_size": [Interval(Integral, 1, MAX_BATCH_SIZE, closed="both")],
        "learning_rate_init": [Interval(Real, 0, None, closed="neither")],
        "early_stopping": ["boolean"],
        "validation_fraction": [Interval(Real, 0, 1, closed="neither")],
        "n_iter_no_change": [Interval(Integral, 1, MAX_EPOCHS, closed="both")],
        "tol": [Interval(Real, 0, None, closed="left")],
        "random_state": ["random_state"],
        "verbose": ["verbose"],
        "warm_start": ["boolean"],
        "device": [str, torch.device],
        "callbacks": [list, None],
    }

    # Floats held at once by one inference chunk: about 16 MiB in float32,
    # large enough to keep matrix products efficient.
    _inference_budget = 2**22

    @abstractmethod
    def _build_module(self, n_features, generator):
        """Return the untrained :class:`~skvae.nn.LatentVariableModel`."""

    def _check_data_domain(self, X):
        """Reject values the model's likelihood cannot describe."""

    def _after_training(self, X):
        """Set fitted attributes derived from the trained model and its rows."""

    @property
    def _n_features_out(self):
        check_is_fitted(self)
        return self.n_components

    @_fit_context(prefer_skip_nested_validation=True)
    def fit(self, X, y=None):
        """Train the model on X.

        Parameters
        ----------
        X : array-like or sparse matrix of shape (n_samples, n_features)
            Training data; at least two rows.
        y : None
            Ignored; present for API consistency.

        Returns
        -------
        self : object
            The fitted estimator.
        """
        resume = self.warm_start and hasattr(self, "module_")
        epochs_run = self._train(
            X, self.max_iter, resume=resume, hold_out=self.early_stopping
        )
        self._warn_if_unfinished(self.net_, epochs_run)
        return self

    @_fit_context(prefer_skip_nested_validation=True)
    def partial_fit(self, X, y=None, epochs=1):
        """Train on one chunk of rows, continuing from the previous call.

        For data that does not fit in memory: call it on successive chunks
        (for example slices of a :class:`numpy.memmap`), as many passes over
        the chunks as needed. The weights and the optimiser's state carry
        over from call to call; the first call initialises the model from
        its chunk. ``early_stopping``, ``max_iter`` and ``warm_start`` do not
        apply; training stops within a call only if the loss on the chunk
        stops improving for ``n_iter_no_change`` epochs.

        Parameters
        ----------
        X : array-like or sparse matrix of shape (n_samples, n_features)
            One chunk of training rows; at least two on the first call.
        y : None
            Ignored; present for API consistency.
        epochs : int, default=1
            Passes over this chunk.

        Returns
        -------
        self : object
            The estimator, trained on one more chunk.
        """
        check_scalar(epochs, "epochs", Integral, min_val=1)
        self._train(X, epochs, resume=hasattr(self, "module_"), hold_out=False)
        return self

    def _train(self, X, epochs, resume, hold_out):
        """Build the net unless resuming, train ``epochs`` epochs, and set the
        fitted attributes. Returns the number of epochs run."""
        X = self._validate(X, reset=not resume)
        device = self._torch_device()
        rng = check_random_state(self.random_state)
        init_seed, train_seed, score_seed = rng.randint(_SEED_BOUND, size=3)
        init_generator = torch.Generator().manual_seed(int(init_seed))
        X_train, X_valid = self._split(
            self._to_tensor(X, device), init_generator, hold_out
        )

        if resume:
            module = self.module_
        else:
            module = self._new_module(X.shape[1], init_generator)
            module.initialize_from_data(X_train.to("cpu"))
            self._score_seed = int(score_seed)
        if hasattr(self, "net_") and resume:
            net = self.net_
            prepare_run(net, X_valid, epochs)
        else:
            # A model read by skvae.load resumes with a new optimiser.
            net = build_net(
                module.to(device),
                generator=torch.Generator().manual_seed(int(train_seed)),
                X_valid=X_valid,
                max_epochs=epochs,
                batch_size=self.batch_size,
                learning_rate=self.learning_rate_init,
                n_iter_no_change=self.n_iter_no_change,
                tol=self.tol,
                verbose=self.verbose,
                device=device,
                callbacks=copy.deepcopy(self.callbacks or []),
            )
            net.initialize()

        epochs_before = len(net.history)
        net.partial_fit(X_train, epochs=epochs)
        net.module_.eval()

        self.net_ = net
        self.module_ = net.module_
        self.history_ = net.history
        self.n_iter_ = len(net.history)
        self.loss_curve_ = list(net.history[:, "train_loss"])
        self.validation_loss_curve_ = (
            list(net.history[:, "valid_loss"]) if X_valid is not None else None
        )
        self._after_training(X)
        return len(net.history) - epochs_before

    def _warn_if_unfinished(self, net, epochs_run):
        # The warnings' stacklevel 4 points past this method, fit and the
        # _fit_context wrapper, at the caller's line.
        if stopped_early(net):
            return
        if epochs_run < self.max_iter:
            warnings.warn(
                f"Training was interrupted after {epochs_run} of {self.max_iter} "
                "epochs; the model keeps the weights of the last finished epoch. "
                "Call fit again with warm_start=True to resume.",
                UserWarning,
                stacklevel=4,
            )
        else:
            warnings.warn(
                f"{type(self).__name__}: maximum iterations ({self.max_iter}) "
                "reached and the optimization hasn't converged yet.",
                ConvergenceWarning,
                stacklevel=4,
            )

    def transform(self, X):
        """Encode X into the latent space.

        Parameters
        ----------
        X : array-like or sparse matrix of shape (n_samples, n_features)
            Data to encode.

        Returns
        -------
        Z : ndarray of shape (n_samples, n_components)
            Codes, in X's floating-point dtype.
        """
        check_is_fitted(self)
        X = self._validate(X, reset=False)
        return self._map_rows(_encode, X, self.n_features_in_, X.dtype)

    def inverse_transform(self, X):
        """Map codes back to the input space (the decoder's mean).

        Parameters
        ----------
        X : array-like or sparse matrix of shape (n_samples, n_components)
            Codes, as returned by :meth:`transform`.

        Returns
        -------
        X_original : ndarray of shape (n_samples, n_features_in_)
            Reconstructions, in the codes' floating-point dtype.
        """
        check_is_fitted(self)
        Z = self._validate_codes(X)
        return self._map_rows(_decode, Z, self.n_features_in_, Z.dtype)

    @abstractmethod
    def score_samples(self, X):
        """Log-density of each row of X, in nats."""

    def score(self, X, y=None):
        """Mean log-density of the rows of X, in nats.

        Parameters
        ----------
        X : array-like or sparse matrix of shape (n_samples, n_features)
            Data to score.
        y : None
            Ignored; present for API consistency.

        Returns
        -------
        score : float
            ``score_samples(X).mean()``; higher is better, so model selection
            such as ``GridSearchCV`` can use it directly.
        """
        return float(np.mean(self.score_samples(X)))

    def sample(self, n_samples=1, random_state=None):
        """Draw samples from the fitted model.

        Parameters
        ----------
        n_samples : int, default=1
            Number of samples.
        random_state : int, RandomState instance or None, default=None
            Seed of the draws; None uses the estimator's ``random_state``.

        Returns
        -------
        X : ndarray of shape (n_samples, n_features_in_)
            Samples, in float64.
        """
        check_is_fitted(self)
        check_scalar(n_samples, "n_samples", Integral, min_val=1)
        rng = check_random_state(
            self.random_state if random_state is None else random_state
        )
        generator = self._generator(int(rng.randint(_SEED_BOUND)))
        module = self._inference_module(np.float64)
        rows = self._rows_per_chunk(self.n_features_in_)
        with torch.no_grad():
            chunks = [
                _to_array(module.sample(min(rows, n_samples - start), generator))
                for start in range(0, n_samples, rows)
            ]
        return self._checked(chunks, np.float64)

    def __getstate__(self):
        # A copy: BaseEstimator returns the instance's own __dict__.
        state = dict(super().__getstate__())
        # module_ is net_.module_: left to skorch's own pickling, which maps
        # CUDA tensors to the CPU when the model is unpickled without CUDA.
        if "net_" in state:
            state.pop("module_", None)
        return state

    def __setstate__(self, state):
        super().__setstate__(state)
        if "net_" in state:
            self.module_ = self.net_.module_

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.input_tags.sparse = True
        tags.transformer_tags.preserves_dtype = ["float64", "float32"]
        return tags

    # -- helpers for subclasses ------------------------------------------------

    def _validate(self, X, reset):
        with _quiet_finiteness_check():
            X = validate_data(
                self,
                X,
                accept_sparse="csr",
                dtype=FLOAT_DTYPES,
                ensure_min_samples=2 if reset else 1,
                reset=reset,
            )
        self._check_data_domain(X)
        return X

    def _new_module(self, n_features, generator):
        """The untrained module, leaving the global torch random state alone.

        Layers draw throw-away initial weights from the global generator
        before _build_module re-draws them from ``generator``; forking keeps
        the caller's global random stream untouched.
        """
        with torch.random.fork_rng(devices=[]):
            return self._build_module(n_features, generator)

    def _validate_codes(self, Z):
        with _quiet_finiteness_check():
            Z = check_array(Z, accept_sparse="csr", dtype=FLOAT_DTYPES, input_name="X")
        if Z.shape[1] != self.n_components:
            raise ValueError(
                f"X has {Z.shape[1]} features, but inverse_transform expects "
                f"codes with n_components={self.n_components} columns."
            )
        return Z

    def _torch_device(self):
        if isinstance(self.device, str) and self.device == "auto":
            return torch.device("cuda" if torch.cuda.is_available() else "cpu")
        try:
            device = torch.device(self.device)
        except RuntimeError as exc:
            raise ValueError(f"device={self.device!r} is not a torch device.") from exc
        if device.type == "cuda" and not torch.cuda.is_available():
            raise ValueError(f"device={self.device!r} but no CUDA device is available.")
        return device

    def _split(self, X, generator, hold_out):
        """Hold out ``validation_fraction`` of the rows if ``hold_out``."""
        if not hold_out:
            return X, None
        n_valid = max(1, round(self.validation_fraction * len(X)))
        if n_valid >= len(X):
            raise ValueError(
                f"early_stopping needs at least one training row, but "
                f"validation_fraction={self.validation_fraction} of {len(X)} rows "
                "leaves none."
            )
        order = torch.randperm(len(X), generator=generator).to(X.device)
        return X[order[n_valid:]], X[order[:n_valid]]

    def _generator(self, seed):
        # On the CPU whatever the device: see skvae.nn.gaussian.standard_normal.
        return torch.Generator().manual_seed(seed)

    def _rows_per_chunk(self, floats_per_row):
        return max(1, self._inference_budget // max(1, floats_per_row))

    def _samples_per_pass(self, n_samples, floats_per_sample):
        """Importance samples of a row to evaluate at once: None (all of
        them) while they fit the inference budget, else as many as do, so
        that no K asks for more memory."""
        if n_samples * floats_per_sample <= self._inference_budget:
            return None
        return max(1, self._inference_budget // floats_per_sample)

    def _to_tensor(self, X, device=None, dtype=np.float32):
        if device is None:
            device = next(self.module_.parameters()).device
        if sp.issparse(X):
            X = X.toarray()
        # A copy: torch cannot share memory with read-only arrays (memmaps).
        return torch.tensor(np.asarray(X, dtype=dtype), device=device)

    def _inference_module(self, dtype):
        """The fitted module evaluated in ``dtype`` (float32 or float64).

        Training runs in float32. Float32 matrix products round differently
        for different numbers of rows, so a row's output would shift in its
        last bit with the chunk it lands in; a float64 copy for float64 data
        keeps every row's result independent of the others, as scikit-learn
        requires, and costs one copy of the weights per call.
        """
        if dtype == np.float32:
            return self.module_
        return copy.deepcopy(self.module_).to(torch.float64)

    def _checked(self, chunks, dtype):
        """The chunks of output as one array of ``dtype``, all finite."""
        out = np.concatenate(chunks).astype(dtype, copy=False)
        bad = ~np.isfinite(out).reshape(len(out), -1).all(axis=1)
        if bad.any():
            raise ValueError(
                f"{type(self).__name__} produced non-finite values for "
                f"{bad.sum()} row(s) (first: row {np.flatnonzero(bad)[0]}). The "
                "input is probably far outside the range of the training data; "
                "scale it as the training data was scaled."
            )
        return out

    def _map_rows(self, fn, X, floats_per_row, out_dtype):
        """Evaluate ``fn(module, x_chunk)`` over chunks of rows, in X's dtype.

        Chunks bound the memory of inference whatever the number of rows.
        """
        module = self._inference_module(X.dtype)
        rows = self._rows_per_chunk(floats_per_row)
        with torch.no_grad():
            out = [
                _to_array(
                    fn(module, self._to_tensor(X[start : start + rows], dtype=X.dtype))
                )
                for start in range(0, X.shape[0], rows)
            ]
        return self._checked(out, out_dtype)


def _to_array(tensor):
    """A NumPy copy of one chunk's output, so that no torch storage outlives
    its chunk.

    Keeping each chunk's small output tensor until the end fragments glibc's
    heap: scoring a million rows then held 2.2 GiB instead of about 40 MiB
    (benchmarks/bench_scale.py memory).
    """
    return np.array(tensor.detach().cpu().numpy(), copy=True)


def _quiet_finiteness_check():
    """scikit-learn tests finiteness on a sum, which warns when +inf meets -inf
    or overflows before it raises its clear ValueError; only the error is
    useful."""
    return np.errstate(invalid="ignore", over="ignore")


def _encode(module, x):
    return module.encode(x)


def _decode(module, z):
    return module.decode(z)
