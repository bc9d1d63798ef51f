"""The scikit-learn side shared by every skvae estimator."""

import copy
import sys
import warnings
from abc import abstractmethod
from dataclasses import dataclass
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
from sklearn.utils._param_validation import Interval, StrOptions
from sklearn.utils.sparsefuncs import mean_variance_axis
from sklearn.utils.validation import check_array, check_is_fitted, validate_data

from ._training import build_net, converged
from .exceptions import PosteriorCollapseWarning
from .inference import _PROBE_ROWS, FittedModule, _floats_per_row, as_tensor

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
        "learning_rate": [StrOptions({"adaptive", "constant"})],
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

    @abstractmethod
    def _build_module(self, n_features, generator):
        """Return the untrained :class:`~skvae.nn.LatentVariableModel`."""

    def _check_data_domain(self, X):
        """Reject values the model's likelihood cannot describe."""

    def _after_training(self, X, incremental):
        """Set fitted attributes derived from the trained model and its rows.

        ``incremental`` is True for ``partial_fit``, whose rows add to those
        of the calls before it.
        """

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
        run = self._train(
            X,
            self.max_iter,
            resume=resume,
            hold_out=self.early_stopping,
            schedule=self.learning_rate,
            incremental=False,
        )
        self._warn_if_unfinished(run)
        self._warn_if_collapsed()
        return self

    @_fit_context(prefer_skip_nested_validation=True)
    def partial_fit(self, X, y=None, epochs=1):
        """Train on one chunk of rows, continuing from the previous call.

        For data that does not fit in memory: call it on successive chunks
        (for example slices of a :class:`numpy.memmap`), as many passes over
        the chunks as needed. The weights and the optimiser's state carry
        over from call to call; the first call initialises the model from
        its chunk. The learning rate is ``learning_rate_init`` throughout:
        with no end of the data in sight there is nothing to anneal towards,
        so lower it with ``set_params`` between passes to anneal by hand.
        ``early_stopping``, ``max_iter``, ``learning_rate`` and
        ``warm_start`` do not apply; training stops within a call only if
        the loss on the chunk stops improving for ``n_iter_no_change``
        epochs.

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
        self._train(
            X,
            epochs,
            resume=hasattr(self, "module_"),
            hold_out=False,
            schedule="constant",
            incremental=True,
        )
        return self

    def _train(self, X, epochs, resume, hold_out, schedule, incremental):
        """Train for at most ``epochs`` epochs and set the fitted attributes.

        A new skorch net drives every run, built from the current parameters,
        so that ``set_params`` between runs takes effect; a resumed run takes
        over the module and the optimiser's state. A run that raises leaves
        the estimator, its weights included, as it was.

        Returns
        -------
        run : TrainingRun
            What the run did.
        """
        state_before = dict(vars(self))
        weights_before = copy.deepcopy(self.module_.state_dict()) if resume else None
        try:
            return self._run(X, epochs, resume, hold_out, schedule, incremental)
        except BaseException:
            vars(self).clear()
            vars(self).update(state_before)
            if weights_before is not None:
                self.module_.load_state_dict(weights_before)
                self.module_.eval()
            raise

    def _run(self, X, epochs, resume, hold_out, schedule, incremental):
        if resume:
            self._check_architecture()
        X = self._validate(X, reset=not resume)
        device = self._torch_device()
        rng = check_random_state(self.random_state)
        init_seed, train_seed, score_seed, valid_seed = rng.randint(_SEED_BOUND, size=4)
        init_generator = torch.Generator().manual_seed(int(init_seed))
        X_train, X_valid = self._split(
            self._to_tensor(X, device), init_generator, hold_out
        )

        previous_net = getattr(self, "net_", None) if resume else None
        if resume:
            module = self.module_
        else:
            module = self._new_module(X.shape[1], init_generator)
            module.initialize_from_data(X_train.to("cpu"))
            self._score_seed = int(score_seed)
            self._architecture = self._architecture_params()
        net = build_net(
            module.to(device),
            generator=torch.Generator().manual_seed(int(train_seed)),
            validation_seed=int(valid_seed),
            X_valid=X_valid,
            max_epochs=epochs,
            batch_size=self.batch_size,
            learning_rate=self.learning_rate_init,
            schedule=schedule,
            n_iter_no_change=self.n_iter_no_change,
            tol=self.tol,
            verbose=self.verbose,
            device=device,
            callbacks=copy.deepcopy(self.callbacks or []),
            name=type(self).__name__,
        )
        net.initialize()
        if previous_net is not None:
            # A model read by skvae.load has no optimiser state to take over.
            net.optimizer_.load_state_dict(previous_net.optimizer_.state_dict())
            net.history = previous_net.history
        epochs_before = len(net.history)
        net.partial_fit(X_train, epochs=epochs)
        net.module_.eval()
        run = TrainingRun(
            epochs=len(net.history) - epochs_before,
            planned=epochs,
            converged=converged(net),
        )

        new_losses = list(net.history[epochs_before:, "train_loss"])
        self.net_ = net
        self.module_ = net.module_
        self.history_ = net.history
        self.n_iter_ = (getattr(self, "n_iter_", 0) if resume else 0) + run.epochs
        self.loss_curve_ = (
            getattr(self, "loss_curve_", []) if resume else []
        ) + new_losses
        self.validation_loss_curve_ = (
            list(net.history[epochs_before:, "valid_loss"])
            if X_valid is not None
            else None
        )
        self._after_training(X, incremental)
        return run

    # Parameters that can change between training runs: everything else
    # defines the network, which a resumed run keeps.
    _run_params = frozenset(
        {
            "max_iter",
            "batch_size",
            "learning_rate_init",
            "learning_rate",
            "early_stopping",
            "validation_fraction",
            "n_iter_no_change",
            "tol",
            "random_state",
            "verbose",
            "warm_start",
            "device",
            "callbacks",
            "n_importance_samples",
            "density_estimate",
        }
    )

    def _architecture_params(self):
        return {
            key: _comparable(value)
            for key, value in self.get_params(deep=False).items()
            if key not in self._run_params
        }

    def _check_architecture(self):
        # A model read by skvae.load was built from its current parameters.
        fitted = getattr(self, "_architecture", None)
        if fitted is None:
            return
        changed = sorted(
            key
            for key, value in self._architecture_params().items()
            if fitted.get(key) != value
        )
        if changed:
            raise ValueError(
                f"{', '.join(changed)} changed since the model was fitted, but "
                "warm_start and partial_fit keep the fitted network. Set them "
                "back, or fit a new model (warm_start=False)."
            )

    def _warn_if_collapsed(self):
        # At least half, not most: the 2-D code that is really a 1-D curve,
        # one of two latents collapsed, is the collapse users meet first.
        collapsed = getattr(self, "collapsed_", None)
        if collapsed is None or collapsed.sum() < self.n_components / 2:
            return
        warnings.warn(
            f"{type(self).__name__}: {collapsed.sum()} of {self.n_components} "
            "latents collapsed onto the prior (see collapsed_); the model "
            "uses fewer dimensions than n_components. Scale the data, use "
            "fewer latents, or lower beta.",
            PosteriorCollapseWarning,
            stacklevel=_user_stacklevel(),
        )

    def _warn_if_unfinished(self, run):
        if run.converged:
            return
        if run.epochs < run.planned:
            warnings.warn(
                f"Training was interrupted after {run.epochs} of {run.planned} "
                "epochs; the model keeps the weights of the last finished epoch. "
                "Call fit again with warm_start=True to resume.",
                UserWarning,
                stacklevel=_user_stacklevel(),
            )
        else:
            warnings.warn(
                f"{type(self).__name__}: the loss was still improving when "
                f"max_iter={self.max_iter} epochs ran out, before the learning "
                "rate had been lowered to its final value. Increase max_iter, or "
                "call fit again with warm_start=True.",
                ConvergenceWarning,
                stacklevel=_user_stacklevel(),
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
        return self._map_rows(_encode, X, X.dtype)

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
        return self._map_rows(_decode, Z, Z.dtype)

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
        fitted = FittedModule(self, np.float64)
        module = fitted.module
        cost = _floats_per_row(
            lambda: module.sample(_PROBE_ROWS, self._generator(0)), _PROBE_ROWS
        )
        return fitted.map_chunks(
            lambda start, stop: module.sample(stop - start, generator),
            n_samples,
            fitted.rows_per_chunk(cost),
        )

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

        Every module is built here (fit and skvae.load), so the check of
        n_components against the width of the data is common to all
        estimators. A user's network draws its initial weights from the
        global generator, seeded here from ``generator`` so that
        ``random_state`` decides them; forking keeps the caller's global
        random stream untouched.
        """
        if self.n_components > n_features:
            raise ValueError(
                f"n_components={self.n_components} must be at most "
                f"n_features={n_features}: a row of {n_features} features "
                "needs no longer code."
            )
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(generator.initial_seed())
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

    def _importance_weighted_scores(self, X):
        """IWAE estimate of log p(x) for the validated rows X, with
        ``n_importance_samples`` draws in passes that fit the memory budget.

        The cost of one draw is measured on one row, so the passes fit any
        network.
        """
        n_samples = self.n_importance_samples
        fitted = FittedModule(self, X.dtype)
        row = fitted.tensor(X[:1])
        floats_per_sample = _floats_per_row(
            lambda: fitted.module.log_prob(
                row, self._generator(0), n_samples=_PROBE_SAMPLES
            ),
            _PROBE_SAMPLES,
        )
        samples_per_pass = _samples_per_pass(
            n_samples, floats_per_sample, fitted.budget
        )

        def log_prob(module, x):
            generator = self._generator(self._score_seed)
            return module.log_prob(
                x, generator, n_samples=n_samples, samples_per_pass=samples_per_pass
            )

        return fitted.map_rows(log_prob, X, out_dtype=np.float64)

    def _to_tensor(self, X, device=None, dtype=np.float32):
        if device is None:
            device = next(self.module_.parameters()).device
        return as_tensor(X, device, dtype)

    def _inference_module(self, dtype):
        """The fitted module evaluated in ``dtype`` (see FittedModule)."""
        return FittedModule(self, dtype).module

    def _map_rows(self, fn, X, out_dtype):
        """Evaluate ``fn(module, x_chunk)`` over chunks of rows, in X's dtype
        (see FittedModule.map_rows)."""
        return FittedModule(self, X.dtype).map_rows(fn, X, out_dtype=out_dtype)


@dataclass(frozen=True)
class TrainingRun:
    """What one call of ``fit`` or ``partial_fit`` did."""

    epochs: int
    planned: int
    converged: bool


def _comparable(value):
    """A parameter value in a form that compares equal to its equivalents."""
    if isinstance(value, list | tuple | np.ndarray):
        return tuple(_comparable(v) for v in np.asarray(value, dtype=object).ravel())
    return value


# Packages whose frames a warning skips to reach the user's line: skvae's
# own, and the libraries that call fit on the user's behalf.
_LIBRARY_PACKAGES = frozenset({"skvae", "sklearn", "skorch", "joblib"})


def _user_stacklevel():
    """The ``stacklevel`` at which a warning points at the user's code.

    Counted from the function that calls ``warnings.warn``: the first frame
    outside skvae, scikit-learn, skorch and joblib, so that a warning raised
    inside ``Pipeline.fit`` or ``fit_transform`` names the line that called
    them.
    """
    frame, level = sys._getframe(1), 1
    while (
        frame.f_back is not None
        and frame.f_globals.get("__name__", "").partition(".")[0] in _LIBRARY_PACKAGES
    ):
        frame, level = frame.f_back, level + 1
    return level


def _layer_widths(layers, name):
    """Hidden widths of an MLP parameter as a tuple of positive ints."""
    widths = tuple(np.ravel(layers))
    if not all(isinstance(w, Integral) and w >= 1 for w in widths):
        raise ValueError(f"{name} must hold positive integers, got {layers!r}.")
    return tuple(int(w) for w in widths)


def _samples_per_pass(n_samples, floats_per_sample, budget):
    """Importance samples of a row to evaluate at once: None (all of them)
    while they fit the inference budget, else as many as do, so that no K
    asks for more memory."""
    if n_samples * floats_per_sample <= budget:
        return None
    return max(1, budget // floats_per_sample)


# Importance samples of one row that the cost of one draw is measured on.
_PROBE_SAMPLES = 8


def _accumulate_moments(est, X, incremental):
    """Set ``n_samples_seen_``, ``mean_`` and ``var_`` of ``est`` to those of
    the rows seen: X's, joined, for ``partial_fit``, by those of the calls
    before it."""
    if incremental and hasattr(est, "n_samples_seen_"):
        seen = est.n_samples_seen_, est.mean_, est.var_
    else:
        seen = 0, 0.0, 0.0
    est.n_samples_seen_, est.mean_, est.var_ = _updated_moments(X, *seen)


def _updated_moments(X, n_seen, mean, var):
    """Count, mean and variance (ddof=0) per feature of ``n_seen`` earlier
    rows with those moments, joined by X's rows.

    The pairwise update of Chan, Golub and LeVeque, as IncrementalPCA's.
    """
    if sp.issparse(X):
        X_mean, X_var = mean_variance_axis(X.astype(np.float64), axis=0)
    else:
        X_mean = X.mean(axis=0, dtype=np.float64)
        X_var = X.var(axis=0, dtype=np.float64)
    n_X = X.shape[0]
    n_total = n_seen + n_X
    delta = X_mean - mean
    mean = mean + delta * (n_X / n_total)
    var = (n_seen * var + n_X * X_var + delta**2 * (n_seen * n_X / n_total)) / n_total
    return n_total, mean, var


def _quiet_finiteness_check():
    """scikit-learn tests finiteness on a sum, which warns when +inf meets -inf
    or overflows before it raises its clear ValueError; only the error is
    useful."""
    return np.errstate(invalid="ignore", over="ignore")


def _encode(module, x):
    return module.encode(x)


def _decode(module, z):
    return module.decode(z)
