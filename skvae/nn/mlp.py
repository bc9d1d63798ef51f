"""Multi-layer perceptrons initialised from an explicit random generator."""

import itertools
import math

from torch import nn

ACTIVATIONS = {
    "relu": nn.ReLU,
    "silu": nn.SiLU,
    "tanh": nn.Tanh,
    "elu": nn.ELU,
    "gelu": nn.GELU,
}


def reset_linear_(layer, generator=None):
    """Re-draw a linear layer's parameters with PyTorch's default scheme.

    ``nn.Linear`` draws from the global random state; drawing from
    ``generator`` instead makes a model's initialisation depend on its own
    seed alone.

    Parameters
    ----------
    layer : torch.nn.Linear
        The layer to re-initialise in place.
    generator : torch.Generator, default=None
        Source of randomness; the global one when None.
    """
    nn.init.kaiming_uniform_(layer.weight, a=math.sqrt(5), generator=generator)
    if layer.bias is not None:
        bound = 1.0 / math.sqrt(layer.in_features) if layer.in_features else 0.0
        nn.init.uniform_(layer.bias, -bound, bound, generator=generator)


class MLP(nn.Sequential):
    """A fully connected network: linear layers with activations between them.

    Parameters
    ----------
    in_features : int
        Width of the input.
    hidden_layers : sequence of int
        Width of each hidden layer; empty for a single linear (affine) map.
    out_features : int
        Width of the output.
    activation : {"relu", "silu", "tanh", "elu", "gelu"}, default="silu"
        Non-linearity after every hidden layer.
    zero_last : bool, default=False
        Start the last layer at zero, so that the network outputs zero at
        initialisation (identity couplings, residual branches).
    generator : torch.Generator, default=None
        Source of randomness for the initial weights.

    Examples
    --------
    >>> import torch
    >>> from skvae.nn import MLP
    >>> net = MLP(4, (8, 8), 2, generator=torch.Generator().manual_seed(0))
    >>> net(torch.zeros(3, 4)).shape
    torch.Size([3, 2])
    """

    def __init__(
        self,
        in_features,
        hidden_layers,
        out_features,
        activation="silu",
        zero_last=False,
        generator=None,
    ):
        if activation not in ACTIVATIONS:
            raise ValueError(
                f"activation must be one of {sorted(ACTIVATIONS)}, got {activation!r}."
            )
        widths = [in_features, *hidden_layers, out_features]
        layers = []
        for i, (n_in, n_out) in enumerate(itertools.pairwise(widths)):
            linear = nn.Linear(n_in, n_out)
            reset_linear_(linear, generator)
            layers.append(linear)
            if i < len(widths) - 2:
                layers.append(ACTIVATIONS[activation]())
        if zero_last:
            nn.init.zeros_(layers[-1].weight)
            nn.init.zeros_(layers[-1].bias)
        super().__init__(*layers)
