"""Invertible networks and the invertible autoencoder built on them."""

import math

import torch
from torch import nn
from torch.nn import functional as F

from .base import LatentVariableModel
from .coupling import (
    AffineCoupling,
    FixedAffine,
    FixedOrthogonal,
    FixedPermutation,
)
from .gaussian import standard_normal, standard_normal_log_prob

MIXINGS = {"permutation": FixedPermutation, "orthogonal": FixedOrthogonal}


class InvertibleNetwork(nn.Module):
    """A stack of affine coupling blocks with fixed mixing layers between them.

    The layers are a fixed affine input layer (``input_layer``, a
    :class:`~skvae.nn.coupling.FixedAffine`), then coupling, mixing,
    coupling, mixing, ..., coupling: a mixing layer sits between two
    couplings and none follows the last, since a mixing there would only
    rotate the output. The network is the identity at initialisation (see
    :class:`~skvae.nn.coupling.AffineCoupling`) until the input layer is set,
    for example from data by
    :meth:`INNAutoencoderModule.initialize_from_data`.

    Parameters
    ----------
    n_features : int
        Width of the input and output.
    n_blocks : int, default=4
        Number of coupling blocks; at least 1.
    subnet_layers : sequence of int, default=(64, 64)
        Hidden widths of every coupling subnet.
    clamp : float, default=2.0
        Bound on each coupling log-scale (see
        :func:`~skvae.nn.coupling.soft_clamp`).
    activation : str, default="silu"
        Non-linearity of the subnets (see :class:`~skvae.nn.MLP`).
    mixing : {"permutation", "orthogonal"}, default="permutation"
        Fixed random feature permutations, or fixed random rotations, between
        couplings.
    generator : torch.Generator, default=None
        Source of randomness for the initial weights and the mixing layers.

    Examples
    --------
    >>> import torch
    >>> from skvae.nn.inn import InvertibleNetwork
    >>> g = torch.Generator().manual_seed(0)
    >>> net = InvertibleNetwork(3, n_blocks=2, subnet_layers=(8,), generator=g)
    >>> x = torch.randn(5, 3, generator=g)
    >>> y, log_dets = net(x)
    >>> y.shape, log_dets.shape
    (torch.Size([5, 3]), torch.Size([5, 2]))
    >>> torch.allclose(net.inverse(y), x)
    True
    """

    def __init__(
        self,
        n_features,
        n_blocks=4,
        subnet_layers=(64, 64),
        clamp=2.0,
        activation="silu",
        mixing="permutation",
        generator=None,
    ):
        super().__init__()
        if n_blocks < 1:
            raise ValueError(f"n_blocks must be at least 1, got {n_blocks}.")
        if mixing not in MIXINGS:
            raise ValueError(
                f"mixing must be one of {sorted(MIXINGS)}, got {mixing!r}."
            )
        self.input_layer = FixedAffine(n_features)
        self.couplings = nn.ModuleList()
        self.mixings = nn.ModuleList()
        for i in range(n_blocks):
            self.couplings.append(
                AffineCoupling(
                    n_features, subnet_layers, clamp, activation, generator=generator
                )
            )
            if i < n_blocks - 1:
                self.mixings.append(MIXINGS[mixing](n_features, generator=generator))

    def layer_outputs(self, x):
        """The activations between blocks and each block's log-determinant.

        A block is a coupling followed by the mixing layer after it, if any;
        the first block also includes the fixed input layer before its
        coupling. Mixing layers preserve volume, so the entropy of the
        activations changes only through the couplings and the input layer's
        scales (zero unless set).

        Parameters
        ----------
        x : torch.Tensor of shape (n_rows, n_features)
            Input rows.

        Returns
        -------
        outputs : list of torch.Tensor of shape (n_rows, n_features)
            ``n_blocks + 1`` tensors: ``x``, then the output of each block; the
            last is the output of the network.
        log_dets : torch.Tensor of shape (n_rows, n_blocks)
            log|det| of the Jacobian of each block at each row, so that
            ``H(outputs[i + 1]) = H(outputs[i]) + E[log_dets[:, i]]``.

        Examples
        --------
        >>> import torch
        >>> from skvae.nn.inn import InvertibleNetwork
        >>> net = InvertibleNetwork(2, n_blocks=3, subnet_layers=(4,))
        >>> outputs, log_dets = net.layer_outputs(torch.zeros(1, 2))
        >>> len(outputs), log_dets.shape
        (4, torch.Size([1, 3]))
        """
        outputs = [x]
        log_dets = []
        for i, coupling in enumerate(self.couplings):
            h = outputs[-1]
            if i == 0:
                h, input_log_det = self.input_layer(h)
            h, log_det = coupling(h)
            if i == 0:
                log_det = log_det + input_log_det
            if i < len(self.mixings):
                h, mixing_log_det = self.mixings[i](h)
                log_det = log_det + mixing_log_det
            outputs.append(h)
            log_dets.append(log_det)
        return outputs, torch.stack(log_dets, dim=1)

    def forward(self, x):
        """Map ``x`` to ``(y, log_dets)``, log_dets of shape ``(n_rows, n_blocks)``.

        The log-determinant of the whole network is ``log_dets.sum(1)``.
        """
        outputs, log_dets = self.layer_outputs(x)
        return outputs[-1], log_dets

    def inverse(self, y):
        """The ``x`` with ``forward(x)[0] == y``."""
        x = self.couplings[-1].inverse(y)
        for coupling, mixing in zip(
            self.couplings[-2::-1], self.mixings[::-1], strict=True
        ):
            x = coupling.inverse(mixing.inverse(x))
        return self.input_layer.inverse(x)


class INNAutoencoderModule(LatentVariableModel):
    """Invertible-network autoencoder with an exact density.

    Following Nguyen, Ardizzone & Köthe, ``y = net(x)`` is truncated to its
    first ``n_components`` entries to give the code, and a code is decoded by
    inverting the network on the code padded with zeros. The parameter count
    does not depend on ``n_components``.

    The density is the exact change of variables of the prior
    ``y_kept ~ N(0, I)``, ``y_discarded ~ N(0, discarded_std**2 I)`` through
    the network: ``log p(x) = log p(y) + log|det dy/dx|``. The zero padding of
    the decoder is the mode of the discarded part.

    The training loss of a row, in nats per feature, is

    ``loss = (reconstruction - likelihood_weight * log p(x)) / n_features``

    where ``reconstruction`` scores the residual ``x - decode(encode(x))`` as
    noise of the scale ``discarded_std`` the prior gives the discarded entries
    of ``y``: ``sum(|residual|) / discarded_std`` (Laplace, "l1") or
    ``sum(residual**2) / (2 discarded_std**2)`` (Gaussian, "mse"), up to
    constants. A residual and a discarded entry of the same size then cost
    about the same, so neither term drowns the other at the default weight;
    both are sums over features, so the balance does not depend on
    ``n_features``. The reconstruction term is the autoencoder objective of
    the paper, whose ``mean(y_discarded**2)`` penalty is part of ``-log p(x)``
    here; the likelihood term also shapes the code towards ``N(0, I)`` and
    makes :meth:`log_prob` a fitted density. Gradients flow through both
    directions of the network. ``discarded_std`` is in the units of ``x``, so
    the scale of the data sets the balance of the two terms.

    The network's first layer is a fixed centring and rotation
    (:class:`~skvae.nn.coupling.FixedAffine`), the identity until
    :meth:`initialize_from_data` sets it to the principal axes of the
    training rows: the untrained network is then PCA, and training starts
    from PCA's reconstruction instead of from keeping the first
    ``n_components`` raw features.

    Parameters
    ----------
    n_features : int
        Dimension of the data.
    n_components : int
        Number of kept entries of ``y``; between 1 and ``n_features``.
    n_blocks : int, default=4
        Number of coupling blocks.
    subnet_layers : sequence of int, default=(64, 64)
        Hidden widths of every coupling subnet.
    clamp : float, default=2.0
        Bound on each coupling log-scale.
    activation : str, default="silu"
        Non-linearity of the subnets.
    mixing : {"permutation", "orthogonal"}, default="permutation"
        Fixed mixing layers between couplings.
    reconstruction_loss : {"mse", "l1"}, default="mse"
        Squared or absolute reconstruction error.
    likelihood_weight : float, default=1.0
        Weight of the negative log-likelihood in the loss; 0 gives the pure
        autoencoder, larger values a better density at the cost of
        reconstruction. :meth:`log_prob` does not depend on it.
    discarded_std : float, default=0.01
        Standard deviation of the prior on the discarded entries of ``y``, and
        the noise scale of the reconstruction term of the loss.
    generator : torch.Generator, default=None
        Source of randomness for the initial weights and the mixing layers.

    Examples
    --------
    >>> import torch
    >>> from skvae.nn.inn import INNAutoencoderModule
    >>> g = torch.Generator().manual_seed(0)
    >>> inn = INNAutoencoderModule(4, 2, n_blocks=2, subnet_layers=(8,), generator=g)
    >>> x = torch.randn(3, 4, generator=g)
    >>> inn.encode(x).shape, inn.decode(inn.encode(x)).shape
    (torch.Size([3, 2]), torch.Size([3, 4]))
    >>> inn.loss(x, g).shape, inn.log_prob(x, g).shape, inn.sample(5, g).shape
    (torch.Size([3]), torch.Size([3]), torch.Size([5, 4]))
    """

    def __init__(
        self,
        n_features,
        n_components,
        n_blocks=4,
        subnet_layers=(64, 64),
        clamp=2.0,
        activation="silu",
        mixing="permutation",
        reconstruction_loss="mse",
        likelihood_weight=1.0,
        discarded_std=0.01,
        generator=None,
    ):
        super().__init__()
        if not 1 <= n_components <= n_features:
            raise ValueError(
                f"n_components must be between 1 and n_features={n_features}, "
                f"got {n_components}."
            )
        if reconstruction_loss not in ("l1", "mse"):
            raise ValueError(
                "reconstruction_loss must be 'l1' or 'mse', "
                f"got {reconstruction_loss!r}."
            )
        self.n_features = n_features
        self.n_components = n_components
        self.reconstruction_loss = reconstruction_loss
        self.likelihood_weight = likelihood_weight
        self.discarded_std = discarded_std
        self.net = InvertibleNetwork(
            n_features,
            n_blocks,
            subnet_layers,
            clamp,
            activation,
            mixing,
            generator=generator,
        )

    def initialize_from_data(self, x):
        """Start the network as PCA of the training rows ``x``.

        The fixed input layer of the network is set to centre the rows and
        rotate them onto their principal axes (in decreasing order of
        variance), composed with the inverse of the mixing layers, so that the
        untrained network maps a row to its principal-component scores: its
        code is the first ``n_components`` scores and its reconstruction that
        of PCA. Training starts from there. A rotation preserves volume, so
        the density stays exact and the information profile unchanged.

        With ``n_components == n_features`` nothing is discarded, there is no
        choice of kept directions to make, and the layer stays the identity:
        the network is then a plain flow, which fits data whose structure is
        aligned with the features (dequantized pixels, say) better in the
        original coordinates.
        """
        if self.n_components == self.n_features:
            return
        x = x.to(torch.float64)
        mean = x.mean(0)
        centred = x - mean
        eigval, eigvec = torch.linalg.eigh(centred.T @ centred)
        rotation = eigvec[:, torch.argsort(eigval, descending=True)]
        mixed = torch.eye(self.n_features, dtype=self.net.input_layer.rotation.dtype)
        for mixing in self.net.mixings:
            mixed = mixing(mixed)[0]
        # y = ((x - mean) @ rotation @ mixed.T) @ mixed at initialisation.
        self.net.input_layer.set_(mean, rotation @ mixed.to(torch.float64).T)

    def _prior_log_prob(self, y):
        kept, discarded = y[:, : self.n_components], y[:, self.n_components :]
        return (
            standard_normal_log_prob(kept)
            + standard_normal_log_prob(discarded / self.discarded_std)
            - discarded.shape[1] * math.log(self.discarded_std)
        )

    def _pad(self, z):
        return F.pad(z, (0, self.n_features - self.n_components))

    def loss(self, x, generator):
        y, log_dets = self.net(x)
        x_hat = self.net.inverse(self._pad(y[:, : self.n_components]))
        residual = (x - x_hat) / self.discarded_std
        if self.reconstruction_loss == "l1":
            reconstruction = residual.abs().sum(1)
        else:
            reconstruction = 0.5 * residual.square().sum(1)
        log_prob = self._prior_log_prob(y) + log_dets.sum(1)
        return (reconstruction - self.likelihood_weight * log_prob) / self.n_features

    def encode(self, x):
        return self.net(x)[0][:, : self.n_components]

    def decode(self, z):
        return self.net.inverse(self._pad(z))

    def log_prob(self, x, generator=None):
        """Exact log-density of each row, shape ``(n_rows,)``.

        Deterministic: ``generator`` is accepted for the common interface and
        unused.
        """
        y, log_dets = self.net(x)
        return self._prior_log_prob(y) + log_dets.sum(1)

    def sample(self, n_samples, generator):
        y = standard_normal(
            (n_samples, self.n_features), generator, like=next(self.parameters())
        )
        y[:, self.n_components :] *= self.discarded_std
        return self.net.inverse(y)
