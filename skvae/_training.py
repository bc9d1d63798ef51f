"""The one training engine behind every skvae estimator, built on skorch.

skorch supplies the epoch machinery (callbacks, history, early stopping,
learning-rate schedules, checkpoints, device moves). Its default data path
indexes a ``Dataset`` row by row through a ``DataLoader``, which on small
tabular data costs more than the network itself; here every mini-batch is a
slice of one tensor that lives on the training device.
"""

import copy
import math

import torch
from skorch import NeuralNet
from skorch.callbacks import Callback
from skorch.dataset import Dataset
from skorch.helper import predefined_split
from tqdm.auto import tqdm

# At each plateau of the loss the adaptive learning rate is multiplied by
# RATE_DECAY (divided by 5, as scikit-learn's MLP does); training has
# converged at the plateau where it would fall below FINAL_RATE_FRACTION of
# its initial value: at the third plateau, after two divisions.
RATE_DECAY = 0.2
FINAL_RATE_FRACTION = 0.01


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


def adam(param_groups, **kwargs):
    """``torch.optim.Adam``, with its fused kernel for parameters on the CPU.

    skorch's ``optimizer``: it calls this with the module's parameter groups
    and the optimiser's settings. On CUDA torch's Adam already updates all
    parameters in a few kernels, but on the CPU it falls back to one small
    operation per parameter and statistic, about a tenth of a small model's
    fit on the digits; the fused kernel takes the same steps, and made an
    epoch of each estimator 7 to 16 % cheaper there. It takes only
    floating-point parameters, so a module with any other kind (complex,
    say) keeps the default.
    """
    param_groups = list(param_groups)
    parameters = [p for group in param_groups for p in group["params"]]
    if all(p.device.type == "cpu" and p.is_floating_point() for p in parameters):
        kwargs.setdefault("fused", True)
    return torch.optim.Adam(param_groups, **kwargs)


class MeanObjective(torch.nn.Module):
    """Reduce the per-row objective a model returns to the batch loss."""

    def forward(self, per_row_loss):
        return per_row_loss.mean()


class LatentModelNet(NeuralNet):
    """A skorch ``NeuralNet`` for unsupervised latent-variable models.

    The wrapped module must implement
    :class:`~skvae.nn.LatentVariableModel`: the net trains on
    ``module.loss(x, generator)``, so all training noise comes from
    ``generator``. Every validation pass re-uses the same noise (common
    random numbers), so that the validation loss changes between epochs only
    as the weights do, not with fresh Monte Carlo draws.

    Parameters
    ----------
    module : skvae.nn.LatentVariableModel
        The initialised model.
    generator : torch.Generator
        Source of shuffling and of the model's training noise.
    validation_seed : int, default=0
        Seed of the noise of every validation pass.
    **kwargs
        Passed on to :class:`skorch.NeuralNet`.
    """

    def __init__(self, module, *, generator, validation_seed=0, **kwargs):
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
        self.validation_seed = validation_seed
        self.validation_generator = torch.Generator()

    def _set_training(self, training=True):
        # skorch sets the mode before every batch, walking every submodule:
        # about 4 % of a small model's fit. The mode only changes between
        # training and validation, so set it only then.
        if any(
            getattr(self, name + "_").training != training
            for name in self._modules + self._criteria
        ):
            super()._set_training(training)

    def run_single_epoch(self, iterator, training, prefix, step_fn, **fit_params):
        if not training:
            self.validation_generator.manual_seed(self.validation_seed)
        super().run_single_epoch(iterator, training, prefix, step_fn, **fit_params)

    def infer(self, x, **fit_params):
        generator = (
            self.generator if self.module_.training else self.validation_generator
        )
        # Validation rows wait on the CPU (see validation_split).
        return self.module_.loss(x.to(self.device), generator)

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


class TrainingSchedule(Callback):
    """The learning rate of every epoch, and when training has converged.

    The monitored loss reaches a plateau when it has not improved for
    ``patience`` epochs. With ``schedule="adaptive"`` the rate is divided by
    ``1 / RATE_DECAY`` at every plateau, as scikit-learn's ``MLPRegressor``
    does with ``learning_rate="adaptive"``, and training has converged at
    the plateau where it would fall below ``FINAL_RATE_FRACTION`` of its
    initial value. A constant rate leaves stochastic-gradient noise in the
    weights, and the Monte Carlo noise of an ELBO makes its plateau look
    sooner than the optimum is reached; each division lowers that noise and
    lets the loss improve again, so training stops only once the rate is
    small and the loss still does not improve. With ``schedule="constant"``
    the rate never changes and training stops, converged, at the first
    plateau.

    An epoch improves on the best loss when it lowers it by more than
    ``tol`` times the decrease since the first epoch: a threshold relative
    to the progress made, so that it means the same whatever the units or
    the offset of the loss.

    Parameters
    ----------
    schedule : {"adaptive", "constant"}
        How the rate evolves.
    max_epochs : int
        Epochs this run may last.
    patience : int
        Epochs without improvement that make a plateau.
    tol : float
        Relative improvement that counts (see above).
    monitor : {"train_loss", "valid_loss"}
        The loss to watch.
    restore_best : bool
        Whether to end with the weights of the epoch with the best monitored
        loss (for validation losses: early stopping).
    """

    def __init__(self, schedule, max_epochs, patience, tol, monitor, restore_best):
        self.schedule = schedule
        self.max_epochs = max_epochs
        self.patience = patience
        self.tol = tol
        self.monitor = monitor
        self.restore_best = restore_best

    def on_train_begin(self, net, **kwargs):
        self.initial_rate_ = self.rate_ = net.lr
        self.epoch_ = 0
        self.first_loss_ = self.best_loss_ = math.inf
        self.best_state_ = None
        self.since_best_ = 0
        self.converged_ = False
        # Also when resuming: the optimiser's state comes with the rate it
        # ended at. A constant rate is set once only, so that a user's
        # LRScheduler callback can drive it.
        self._set_rate(net)

    def on_epoch_end(self, net, **kwargs):
        loss = net.history[-1, self.monitor]
        self.epoch_ += 1
        if self.epoch_ == 1:
            self.first_loss_ = loss
        threshold = self.tol * max(0.0, self.first_loss_ - self.best_loss_)
        if loss < self.best_loss_ - threshold:
            self.best_loss_ = loss
            self.since_best_ = 0
            if self.restore_best:
                self.best_state_ = copy.deepcopy(net.module_.state_dict())
        else:
            self.since_best_ += 1
        if self.since_best_ < self.patience:
            return
        self.since_best_ = 0
        smaller = self.rate_ * RATE_DECAY
        if self.schedule == "adaptive" and smaller >= (
            FINAL_RATE_FRACTION * self.initial_rate_ * (1 - 1e-9)
        ):
            self.rate_ = smaller
            self._set_rate(net)
            return
        self.converged_ = True
        if self.epoch_ < self.max_epochs:
            # How skorch's own callbacks end training early.
            raise KeyboardInterrupt

    def on_train_end(self, net, **kwargs):
        if self.best_state_ is not None:
            net.module_.load_state_dict(self.best_state_)

    def _set_rate(self, net):
        for group in net.optimizer_.param_groups:
            group["lr"] = self.rate_


def build_net(
    module,
    *,
    generator,
    validation_seed,
    X_valid,
    max_epochs,
    batch_size,
    learning_rate,
    schedule,
    n_iter_no_change,
    tol,
    verbose,
    device,
    callbacks,
    name,
):
    """Assemble the skorch net that trains ``module`` for one run.

    ``name``, the estimator's class name, labels the progress bar.

    Without validation data the training loss is monitored for convergence;
    with it the validation loss is, and the weights of the best epoch are
    restored at the end, as scikit-learn's ``MLPRegressor`` does.

    Returns
    -------
    net : LatentModelNet
        Net ready for ``partial_fit`` (not yet initialised).
    """
    # After the user's callbacks, so that they see the epoch training stops
    # after; the progress bar, last, counts that epoch when training ends.
    schedule_callback = (
        "schedule",
        TrainingSchedule(
            schedule,
            max_epochs,
            patience=n_iter_no_change,
            tol=tol,
            monitor="train_loss" if X_valid is None else "valid_loss",
            restore_best=X_valid is not None,
        ),
    )
    progress = [("progress", EpochProgressBar(max_epochs, name))] if verbose else []
    return LatentModelNet(
        module,
        generator=generator,
        validation_seed=validation_seed,
        optimizer=adam,
        lr=learning_rate,
        max_epochs=max_epochs,
        batch_size=batch_size,
        train_split=validation_split(X_valid),
        callbacks=[
            ("divergence_guard", DivergenceGuard(learning_rate)),
            *callbacks,
            schedule_callback,
            *progress,
        ],
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


def converged(net):
    """Whether the last training run ended on its convergence criterion."""
    return dict(net.callbacks_)["schedule"].converged_
