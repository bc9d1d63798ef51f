"""INNAutoencoder: an invertible network used as an autoencoder."""

from numbers import Integral, Real

import numpy as np
import torch
from sklearn.utils import Bunch
from sklearn.utils._param_validation import Interval, StrOptions
from sklearn.utils.validation import check_is_fitted

from ._base import BaseLatentEstimator, _layer_widths
from .diagnostics import knn_entropy
from .nn.inn import MIXINGS, INNAutoencoderModule
from .nn.mlp import ACTIVATIONS


class INNAutoencoder(BaseLatentEstimator):
    """Invertible neural network used as an autoencoder, with an exact density.

    A stack of affine coupling blocks maps x to y of the same size. The code
    is the first ``n_components`` entries of y; decoding pads a code with
    zeros and runs the network backwards (Nguyen, Ardizzone and Köthe). The
    network is trained on reconstruction error plus the negative
    log-likelihood of a prior on y, a centred normal with a learned width
    per output, so :meth:`score_samples` is the exact log-density of a flow
    by change of variables, whatever ``n_components``. The number of
    parameters of the network does not depend on ``n_components``.

    Before training, a fixed input layer is set to centre the data, divide
    it by its root mean feature variance, and split it into its first
    ``n_components`` principal-component scores, which go to the kept
    outputs, and the residual of each feature, which goes to the discarded
    ones: the untrained network is exactly PCA (its code is the
    principal-component scores, its reconstruction PCA's) and its density a
    Gaussian fitted to the data; training bends it from there. The layer's
    log-determinant is exact, so the density stays exact, and every scale in
    the model is relative to the data's, so multiplying X by a constant
    multiplies the codes by it and shifts the log-density by the Jacobian.

    The loss of a row, in nats per feature, is
    ``(-log N(x; x_hat, noise_std**2 I) - likelihood_weight * log p(x)) /
    n_features + alpha * |theta|**2 / (2 * n_rows)``: the reconstruction
    error scored as Gaussian (``"mse"``) or Laplace (``"l1"``) noise of a
    learned scale, the negative log-likelihood, and an L2 penalty on the
    network's weights divided by the number of training rows (as
    :class:`~sklearn.neural_network.MLPRegressor`'s ``alpha``).

    Read more in the :ref:`User Guide <inn>`.

    Parameters
    ----------
    n_components : int, default=2
        Number of kept outputs (the code size); at most the number of
        features.
    n_blocks : int, default=3
        Number of coupling blocks. Fixed random permutations (or rotations)
        mix the features between blocks. Each block costs two subnet passes
        forward and two for the reconstruction; 2 blocks cost about a third
        less per epoch (on 784 features, 1.4 instead of 1.9 times a
        ``VAETransformer`` epoch) at some cost in density.
    subnet_layers : tuple of int, default=(32, 32)
        Hidden widths of the MLP inside each coupling that computes its
        scales and shifts; unused when ``subnet`` is given.
    clamp : float, default=2.0
        Bound on every coupling log-scale (soft, through arctan), which keeps
        the network and its inverse numerically stable, also on rows far
        from the training data.
    activation : {"relu", "silu", "tanh", "elu", "gelu"}, default="silu"
        Non-linearity of the MLP subnets.
    mixing : {"permutation", "orthogonal"}, default="permutation"
        Fixed volume-preserving layer between coupling blocks. With
        ``"orthogonal"`` the input layer rotates onto the principal axes
        instead of splitting off the residual, and every mixing costs a
        product with a square matrix.
    reconstruction_loss : {"mse", "l1"}, default="mse"
        Reconstruction error of the training loss: squared (Gaussian noise)
        or absolute (Laplace noise, the paper's choice). Use ``"mse"`` when
        reconstructions are judged by squared error, as PCA's are.
    likelihood_weight : float, default=1.0
        Weight of the negative log-likelihood in the training loss. 0 trains
        a pure autoencoder (whose density is then unfitted); values between
        trade density for reconstruction error.
    discarded_std : "learned" or float, default="learned"
        Widths of the prior on y. ``"learned"``: one learned standard
        deviation per output and a learned reconstruction noise scale, both
        started from the data. A float: the model of the paper, standard
        normal on the kept outputs and this fixed width (as a share of the
        data's root mean feature variance) on the discarded ones, which is
        also the reconstruction noise scale. A narrow fixed width makes the
        network squeeze the discarded outputs, and the density pays for the
        squeeze: on the dequantized digits the held-out density was -149
        nats at ``n_components=2`` with 0.01 (in the units of X), against
        65 with learned widths.
    alpha : float, default=2.0
        Strength of the L2 penalty on the network's parameters, divided by
        the number of training rows, so that small data sets are held closer
        to the Gaussian start. Chosen by the defaults benchmark, on the
        held-out density of the digits at ``n_components`` 2, 10 and 64: with
        1 the train-test gaps are 10 to 12 nats; with 2 they are 8 to 9,
        except 14.7 at 10; 4 brings every gap under 10 but costs a nat of
        held-out density; 5 already stops a 2-D ring from being fitted.
    subnet : type or callable, default=None
        Your own coupling subnet instead of the MLP of ``subnet_layers``: a
        :class:`torch.nn.Module` class, or any callable
        ``(n_inputs, n_outputs) -> nn.Module``. Each coupling calls it twice,
        with ``(ceil(n_features / 2), 2 * (n_features // 2))`` and
        ``(n_features // 2, 2 * ceil(n_features / 2))``; the network maps
        rows of shape ``(n_rows, n_inputs)`` (one half of the features, in
        the units of the data's scale) to ``(n_rows, n_outputs)``: raw
        log-scales, then shifts, for the other half. Its output is
        multiplied by a learned gate that starts at zero, so every block
        starts as the identity whatever the subnet's initial weights; the
        estimator never looks inside it. Its initial weights are drawn from
        the global torch generator, seeded from ``random_state``.
    max_iter : int, default=500
        Maximum number of epochs; training usually converges well before.
    batch_size : int, default=256
        Rows per mini-batch. An invertible network does many small
        operations per batch; at 256 rows an epoch on the 64 features of the
        digits costs 1.2 times a ``VAETransformer`` epoch, at 128 about
        twice as much.
    learning_rate_init : float, default=1e-3
        Adam's initial learning rate.
    learning_rate : {"adaptive", "constant"}, default="adaptive"
        Learning-rate schedule. ``"adaptive"`` keeps the rate while the loss
        improves and divides it by 5 each time the loss has not improved for
        ``n_iter_no_change`` epochs (as ``MLPRegressor`` does); training has
        converged at the plateau where the rate would fall below 1 % of
        ``learning_rate_init``. ``"constant"`` keeps ``learning_rate_init``
        and stops at the first plateau; use it to drive the rate with your
        own skorch ``LRScheduler`` callback. Read more in the :ref:`User
        Guide <training>`.
    early_stopping : bool, default=True
        Hold out ``validation_fraction`` of the rows, watch their loss (with
        the same noise every epoch) instead of the training loss, and keep
        the weights of the epoch where it was lowest. On the small data sets
        of the defaults benchmark this is what keeps a density model from
        overfitting (74.8 against 65.1 nats on the digits); ``False`` trains
        on every row.
    validation_fraction : float, default=0.1
        Share of rows held out when ``early_stopping=True``.
    n_iter_no_change : int, default=20
        Epochs without an improvement that make a plateau of the loss, where
        the adaptive learning rate is divided or a constant one stops. Fewer
        let the noise of the loss end training early.
    tol : float, default=1e-4
        An epoch improves on the best loss when it lowers it by more than
        ``tol`` times the decrease since the first epoch: relative to the
        progress made, so it means the same whatever the units of the data
        and the offset of the loss.
    random_state : int, RandomState instance or None, default=None
        Seeds the initial weights, the mixing layers, the validation split,
        shuffling and :meth:`sample`. The global torch seed is never touched.
    verbose : int, default=0
        Show a progress bar over epochs with the training and validation
        losses.
    warm_start : bool, default=False
        Continue training the fitted network for ``max_iter`` more epochs on
        the next call to :meth:`fit`.
    device : str or torch.device, default="cpu"
        Torch device to train and predict on; ``"auto"`` picks ``"cuda"``
        when a GPU is available and ``"cpu"`` otherwise. Random draws are
        made on the CPU and moved to the device, so a seed gives the same
        draws on every device.
    callbacks : list of skorch callbacks or None, default=None
        Extra skorch callbacks; they are copied, not changed, by :meth:`fit`.

    Attributes
    ----------
    module_ : skvae.nn.INNAutoencoderModule
        The trained torch module.
    net_ : skorch.NeuralNet
        The skorch net that trained it.
    history_ : skorch.History
        Per-epoch training record.
    loss_curve_ : list of float
        Training loss after each epoch (per feature).
    validation_loss_curve_ : list of float or None
        Validation loss after each epoch when ``early_stopping=True``.
    n_iter_ : int
        Number of epochs run.
    n_features_in_ : int
        Number of features seen during :meth:`fit`.
    feature_names_in_ : ndarray of shape (n_features_in_,)
        Names of features seen during :meth:`fit`, when X has string column
        names.

    See Also
    --------
    VAETransformer : A variational autoencoder with a stochastic encoder.
    sklearn.decomposition.PCA : The linear counterpart.

    References
    ----------
    .. [1] T.-G. L. Nguyen, L. Ardizzone and U. Köthe, "Training Invertible
       Neural Networks as Autoencoders", GCPR 2019.
    .. [2] J. Callahan and T. Paskett, "Analyzing Information Loss of
       Invertible Variational Autoencoders", 2021.

    Examples
    --------
    >>> import numpy as np
    >>> from skvae import INNAutoencoder
    >>> X = np.random.default_rng(0).normal(size=(200, 4))
    >>> inn = INNAutoencoder(n_components=2, n_blocks=2, subnet_layers=(16,),
    ...                      random_state=0).fit(X)
    >>> inn.transform(X[:3]).shape
    (3, 2)
    >>> inn.information_profile(X).layer_entropy.shape
    (3,)
    """

    _parameter_constraints: dict = {
        **BaseLatentEstimator._parameter_constraints,
        "n_blocks": [Interval(Integral, 1, None, closed="left")],
        "subnet_layers": ["array-like"],
        "clamp": [Interval(Real, 0, None, closed="neither")],
        "activation": [StrOptions(set(ACTIVATIONS))],
        "mixing": [StrOptions(set(MIXINGS))],
        "reconstruction_loss": [StrOptions({"l1", "mse"})],
        "likelihood_weight": [Interval(Real, 0, None, closed="left")],
        "discarded_std": [
            StrOptions({"learned"}),
            Interval(Real, 0, None, closed="neither"),
        ],
        "alpha": [Interval(Real, 0, None, closed="left")],
        "subnet": [callable, None],
    }

    def __init__(
        self,
        n_components=2,
        *,
        n_blocks=3,
        subnet_layers=(32, 32),
        clamp=2.0,
        activation="silu",
        mixing="permutation",
        reconstruction_loss="mse",
        likelihood_weight=1.0,
        discarded_std="learned",
        alpha=2.0,
        subnet=None,
        max_iter=500,
        batch_size=256,
        learning_rate_init=1e-3,
        learning_rate="adaptive",
        early_stopping=True,
        validation_fraction=0.1,
        n_iter_no_change=20,
        tol=1e-4,
        random_state=None,
        verbose=0,
        warm_start=False,
        device="cpu",
        callbacks=None,
    ):
        self.n_components = n_components
        self.n_blocks = n_blocks
        self.subnet_layers = subnet_layers
        self.clamp = clamp
        self.activation = activation
        self.mixing = mixing
        self.reconstruction_loss = reconstruction_loss
        self.likelihood_weight = likelihood_weight
        self.discarded_std = discarded_std
        self.alpha = alpha
        self.subnet = subnet
        self.max_iter = max_iter
        self.batch_size = batch_size
        self.learning_rate_init = learning_rate_init
        self.learning_rate = learning_rate
        self.early_stopping = early_stopping
        self.validation_fraction = validation_fraction
        self.n_iter_no_change = n_iter_no_change
        self.tol = tol
        self.random_state = random_state
        self.verbose = verbose
        self.warm_start = warm_start
        self.device = device
        self.callbacks = callbacks

    def _build_module(self, n_features, generator):
        return INNAutoencoderModule(
            n_features,
            self.n_components,
            n_blocks=self.n_blocks,
            subnet_layers=_layer_widths(self.subnet_layers, "subnet_layers"),
            clamp=self.clamp,
            activation=self.activation,
            mixing=self.mixing,
            reconstruction_loss=self.reconstruction_loss,
            likelihood_weight=self.likelihood_weight,
            discarded_std=self.discarded_std,
            alpha=self.alpha,
            subnet=self.subnet,
            generator=generator,
        )

    def score_samples(self, X):
        """Exact log-density of each row, in nats, by change of variables.

        Parameters
        ----------
        X : array-like or sparse matrix of shape (n_samples, n_features)
            Data to score.

        Returns
        -------
        log_density : ndarray of shape (n_samples,)
            log p(y) + sum of the blocks' log|det J|; deterministic.
        """
        check_is_fitted(self)
        X = self._validate(X, reset=False)
        return self._map_rows(_log_prob, X, np.float64)

    def information_profile(self, X, n_neighbors=3):
        """Differential entropy of every layer's activations, in nats.

        The entropy of the input is estimated once, with the
        Kozachenko-Leonenko k-nearest-neighbour estimator, and carried through
        the blocks exactly: for a bijection h' = g(h),
        H(h') = H(h) + E[log|det J_g(h)|]. Inside the network nothing is lost;
        information is lost only where the outputs are truncated to the code.

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features)
            Data to profile; needs more than ``n_neighbors`` distinct rows.
        n_neighbors : int, default=3
            Neighbours of the entropy estimator.

        Returns
        -------
        profile : sklearn.utils.Bunch
            ``layer_entropy`` : ndarray of shape (n_blocks + 1,)
                Entropy of the input, then of each block's output.
            ``block_log_det`` : ndarray of shape (n_blocks,)
                Mean log|det J| of each block, the change between layers.
            ``code_entropy`` : float
                Entropy of the kept outputs (the code), by the same estimator.
            ``discarded_information`` : float
                H(y) - H(code) = H(discarded | code): the conditional entropy
                of what the truncation throws away. Lower means the zero
                padding loses less; it is relative to the data's scale.
        """
        check_is_fitted(self)
        X = self._validate(X, reset=False)
        module = self._inference_module(X.dtype)
        with torch.no_grad():
            outputs, log_dets = module.net.layer_outputs(
                self._to_tensor(X, dtype=X.dtype)
            )
        block_log_det = log_dets.mean(0).cpu().numpy().astype(np.float64)
        input_entropy = knn_entropy(X, n_neighbors)
        layer_entropy = input_entropy + np.concatenate(
            [[0.0], np.cumsum(block_log_det)]
        )
        code = outputs[-1][:, : self.n_components].cpu().numpy()
        code_entropy = knn_entropy(code.astype(np.float64), n_neighbors)
        return Bunch(
            layer_entropy=layer_entropy,
            block_log_det=block_log_det,
            code_entropy=code_entropy,
            discarded_information=layer_entropy[-1] - code_entropy,
        )


def _log_prob(module, x):
    return module.log_prob(x)
