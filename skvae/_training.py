"""The one training engine behind every skvae estimator, built on skorch.

skorch supplies the epoch machinery (callbacks, history, early stopping,
learning-rate schedules, checkpoints, device moves). Its default data path
indexes a ``Dataset`` row by row through a ``DataLoader``, which on small
tabular data costs more than the network itself; here every mini-batch is a
slice of one tensor that lives on the training device.
"""

import math

import torch
from skorch import NeuralNet
from skorch.callbacks import Callback, EarlyStopping
from skorch.dataset import Dataset
from skorch.helper import predefined_split
from tqdm.auto import tqdm


class TensorBatchIterator:
    """Mini-batches as contiguous slices of one tensor, reshuffled each epoch.

    Used as skorch's ``iterator_train`` / ``iterator_valid``: skorch calls it
    with its dataset and the batch size.

    Parameters
    ----------
    dataset : skorch.dataset.Dataset
        Dataset whose ``X`` is a tensor on the training device.
    batch_size : int
        Rows per mini-batch; the last one may be smaller.
    shuffle : bool, default=False
        Draw a new row order at the start of every pass.
    generator : torch.Generator, default=None
        Source of the row orders.
    """

    def __init__(self, dataset, batch_size, shuffle=False, generator=None):
        self.X = dataset.X
        self.batch_size = batch_size
        self.shuffle = shuffle
        self.generator = generator

    def __len__(self):
        return math.ceil(len(self.X) / self.batch_size)

    def __iter__(self):
        X = self.X
        if self.shuffle:
            order = torch.randperm(len(X), generator=self.generator)
            X = X[order.to(X.device)]
        for start in range(0, len(X), self.batch_size):
            yield X[start : start + self.batch_size], None


class MeanObjective(torch.nn.Module):
    """Reduce the per-row objective a model returns to the batch loss."""

    def forward(self, per_row_loss):
        return per_row_loss.mean()


class LatentModelNet(NeuralNet):
    """A skorch ``NeuralNet`` for unsupervised latent-variable models.

    The wrapped module must implement
    :class:`~skvae.nn.LatentVariableModel`: the net trains on
    ``module.loss(x, generator)``, so all training noise comes from
    ``generator``.

    Parameters
    ----------
    module : skvae.nn.LatentVariableModel
        The initialised model.
    generator : torch.Generator
        Source of shuffling and of the model's training noise.
    **kwargs
        Passed on to :class:`skorch.NeuralNet`.
    """

    def __init__(self, module, *, generator, **kwargs):
        super().__init__(
            module,
            criterion=MeanObjective,
            iterator_train=TensorBatchIterator,
            iterator_train__shuffle=True,
            iterator_train__generator=generator,
            iterator_valid=TensorBatchIterator,
            **kwargs,
        )
        self.generator = generator

    def _set_training(self, training=True):
        # skorch sets the mode before every batch, walking every submodule:
        # about 4 % of a small model's fit. The mode only changes between
        # training and validation, so set it only then.
        if any(
            getattr(self, name + "_").training != training
            for name in self._modules + self._criteria
        ):
            super()._set_training(training)

    def infer(self, x, **fit_params):
        # Validation rows wait on the CPU (see validation_split).
        return self.module_.loss(x.to(self.device), self.generator)

    def get_loss(self, y_pred, y_true, X=None, training=False):
        return self.criterion_(y_pred)


class DivergenceGuard(Callback):
    """Stop training as soon as the loss stops being a finite number.

    Parameters
    ----------
    learning_rate : float
        The learning rate in use, quoted in the error's remedy.
    """

    def __init__(self, learning_rate):
        self.learning_rate = learning_rate

    def on_batch_end(self, net, batch=None, training=None, **kwargs):
        key = "train_loss" if training else "valid_loss"
        loss = net.history[-1, "batches", -1, key]
        if not math.isfinite(loss):
            epoch = len(net.history)
            raise RuntimeError(
                f"Training diverged: the {key.replace('_', ' ')} became {loss} in "
                f"epoch {epoch}. Lower learning_rate_init (now "
                f"{self.learning_rate:g}), or scale the data first, e.g. with "
                "sklearn.preprocessing.StandardScaler."
            )


class EpochProgressBar(Callback):
    """One tqdm bar over the epochs, showing the latest losses.

    Parameters
    ----------
    total : int
        Number of epochs planned.
    name : str
        Label of the bar: the estimator's class name.
    """

    def __init__(self, total, name):
        self.total = total
        self.name = name

    def on_train_begin(self, net, **kwargs):
        self.epochs_before_ = len(net.history)
        self.bar_ = tqdm(total=self.total, desc=self.name, unit="epoch")

    def on_epoch_end(self, net, **kwargs):
        # close() draws the final line; drawing it here as well would print
        # it twice wherever stderr is not a terminal.
        self._advance(net, draw=self._epochs_run(net) < self.total)

    def on_train_end(self, net, **kwargs):
        # The epoch on which early stopping fires ends before this callback
        # sees it: count it here.
        self._advance(net, draw=False)
        self.bar_.close()

    def _epochs_run(self, net):
        return len(net.history) - self.epochs_before_

    def _advance(self, net, draw):
        """Move the bar to the epochs run, with the latest losses."""
        epochs = self._epochs_run(net)
        if epochs == self.bar_.n:
            return
        losses = {
            key: f"{net.history[-1, key]:.4g}"
            for key in ("train_loss", "valid_loss")
            if key in net.history[-1]
        }
        self.bar_.set_postfix(losses, refresh=False)
        if draw:
            self.bar_.update(epochs - self.bar_.n)
        else:
            self.bar_.n = epochs


class _StopCriterion(EarlyStopping):
    """skorch's early stopping, quiet, remembering whether it fired."""

    def __init__(self, **kwargs):
        super().__init__(sink=_silent, **kwargs)

    def on_train_begin(self, net, **kwargs):
        super().on_train_begin(net, **kwargs)
        self.stopped_ = False

    def on_epoch_end(self, net, **kwargs):
        try:
            super().on_epoch_end(net, **kwargs)
        except KeyboardInterrupt:
            self.stopped_ = True
            raise


def _silent(*args, **kwargs):
    pass


def build_net(
    module,
    *,
    generator,
    X_valid,
    max_epochs,
    batch_size,
    learning_rate,
    n_iter_no_change,
    tol,
    verbose,
    device,
    callbacks,
    name,
):
    """Assemble the skorch net that trains ``module``.

    ``name``, the estimator's class name, labels the progress bar.

    Without validation data the training loss is monitored for convergence;
    with it the validation loss is, and the best weights are restored at the
    end, as scikit-learn's ``MLPRegressor`` does.

    Returns
    -------
    net : LatentModelNet
        Net ready for ``partial_fit`` (not yet initialised).
    """
    engine_callbacks = [
        ("divergence_guard", DivergenceGuard(learning_rate)),
        (
            "stop_criterion",
            _StopCriterion(
                monitor=_monitor(X_valid),
                patience=n_iter_no_change,
                threshold=tol,
                threshold_mode="abs",
                load_best=X_valid is not None,
            ),
        ),
    ]
    if verbose:
        engine_callbacks.append(("progress", EpochProgressBar(max_epochs, name)))
    return LatentModelNet(
        module,
        generator=generator,
        optimizer=torch.optim.Adam,
        lr=learning_rate,
        max_epochs=max_epochs,
        batch_size=batch_size,
        train_split=validation_split(X_valid),
        callbacks=engine_callbacks + list(callbacks),
        callbacks__print_log=None,
        device=device,
    )


def validation_split(X_valid):
    """skorch ``train_split`` that validates on ``X_valid`` (None: no split).

    The rows are kept on the CPU, batches move to the device: a net pickled
    on a GPU machine then holds no device tensor outside the ones skorch
    itself maps to the CPU when unpickled without CUDA.
    """
    return None if X_valid is None else predefined_split(Dataset(X_valid.cpu()))


def prepare_run(net, X_valid, epochs):
    """Point a built net's validation, stopping and progress bar at a new run.

    A resumed fit or a ``partial_fit`` may validate where the first run did
    not (or the reverse), and may last a different number of epochs.
    """
    params = {
        "train_split": validation_split(X_valid),
        "callbacks__stop_criterion__monitor": _monitor(X_valid),
        "callbacks__stop_criterion__load_best": X_valid is not None,
    }
    if "progress" in dict(net.callbacks_):
        params["callbacks__progress__total"] = epochs
    net.set_params(**params)


def _monitor(X_valid):
    return "train_loss" if X_valid is None else "valid_loss"


def stopped_early(net):
    """Whether the last training run ended on its convergence criterion."""
    return dict(net.callbacks_)["stop_criterion"].stopped_
