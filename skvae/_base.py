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

from ._training import build_net, stopped_early, validation_split

FLOAT_DTYPES = (np.float64, np.float32)
_SEED_BOUND = np.iinfo(np.int32).max


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
        "max_iter": [Interval(Integral, 1, None, closed="left")],
        "batch_size": [Interval(Integral, 1, None, closed="left")],
        "learning_rate_init": [Interval(Real, 0, None, closed="neither")],
        "early_stopping": ["boolean"],
        "validation_fraction": [Interval(Real, 0, 1, closed="neither")],
        "n_iter_no_change": [Interval(Integral, 1, None, closed="left")],
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
        first_pass = not (self.warm_start and hasattr(self, "net_"))
        X = self._validate(X, reset=first_pass)
        device = self._torch_device()
        rng = check_random_state(self.random_state)
        init_seed, train_seed, score_seed = rng.randint(_SEED_BOUND, size=3)
        init_generator = torch.Generator().manual_seed(int(init_seed))
        X_train, X_valid = self._split(self._to_tensor(X, device), init_generator)

        if first_pass:
            # Layers draw throw-away initial weights from the global generator
            # before _build_module re-draws them from init_generator; forking
            # keeps the caller's global random stream untouched.
            with torch.random.fork_rng(devices=[]):
                module = self._build_module(X.shape[1], init_generator)
            module.initialize_from_data(X_train.to("cpu"))
            net = build_net(
                module.to(device),
                generator=torch.Generator(device=device).manual_seed(int(train_seed)),
                X_valid=X_valid,
                max_epochs=self.max_iter,
                batch_size=self.batch_size,
                learning_rate=self.learning_rate_init,
                n_iter_no_change=self.n_iter_no_change,
                tol=self.tol,
                verbose=self.verbose,
                device=device,
                callbacks=copy.deepcopy(self.callbacks or []),
            )
            net.initialize()
            self._score_seed = int(score_seed)
        else:
            net = self.net_
            if X_valid is not None:
                net.set_params(train_split=validation_split(X_valid))

        epochs_before = len(net.history)
        net.partial_fit(X_train, epochs=self.max_iter)
        net.module_.eval()
        self._warn_if_unfinished(net, len(net.history) - epochs_before)

        self.net_ = net
        self.module_ = net.module_
        self.history_ = net.history
        self.n_iter_ = len(net.history)
        self.loss_curve_ = list(net.history[:, "train_loss"])
        self.validation_loss_curve_ = (
            list(net.history[:, "valid_loss"]) if X_valid is not None else None
        )
        return self

    def _warn_if_unfinished(self, net, epochs_run):
        if stopped_early(net):
            return
        if epochs_run < self.max_iter:
            warnings.warn(
                f"Training was interrupted after {epochs_run} of {self.max_iter} "
                "epochs; the model keeps the weights of the last finished epoch. "
                "Call fit again with warm_start=True to resume.",
                UserWarning,
                stacklevel=2,
            )
        else:
            warnings.warn(
                f"{type(self).__name__}: maximum iterations ({self.max_iter}) "
                "reached and the optimization hasn't converged yet.",
                ConvergenceWarning,
                stacklevel=2,
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
        X : array-like of shape (n_samples, n_components)
            Codes, as returned by :meth:`transform`.

        Returns
        -------
        X_original : ndarray of shape (n_samples, n_features_in_)
            Reconstructions, in the codes' floating-point dtype.
        """
        check_is_fitted(self)
        Z = check_array(X, dtype=FLOAT_DTYPES, input_name="X")
        if Z.shape[1] != self.n_components:
            raise ValueError(
                f"X has {Z.shape[1]} features, but inverse_transform expects "
                f"codes with n_components={self.n_components} columns."
            )
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
                module.sample(min(rows, n_samples - start), generator)
                for start in range(0, n_samples, rows)
            ]
        return self._to_numpy(torch.cat(chunks), np.float64)

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.input_tags.sparse = True
        tags.transformer_tags.preserves_dtype = ["float64", "float32"]
        return tags

    # -- helpers for subclasses ------------------------------------------------

    def _validate(self, X, reset):
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

    def _torch_device(self):
        try:
            device = torch.device(self.device)
        except RuntimeError as exc:
            raise ValueError(f"device={self.device!r} is not a torch device.") from exc
        if device.type == "cuda" and not torch.cuda.is_available():
            raise ValueError(f"device={self.device!r} but no CUDA device is available.")
        return device

    def _split(self, X, generator):
        """Hold out ``validation_fraction`` of the rows when stopping early."""
        if not self.early_stopping:
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
        device = next(self.module_.parameters()).device
        return torch.Generator(device=device).manual_seed(seed)

    def _rows_per_chunk(self, floats_per_row):
        return max(1, self._inference_budget // max(1, floats_per_row))

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

    def _to_numpy(self, tensor, dtype):
        out = tensor.detach().cpu().numpy().astype(dtype, copy=False)
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
                fn(module, self._to_tensor(X[start : start + rows], dtype=X.dtype))
                for start in range(0, X.shape[0], rows)
            ]
        return self._to_numpy(torch.cat(out), out_dtype)


def _encode(module, x):
    return module.encode(x)


def _decode(module, z):
    return module.decode(z)
