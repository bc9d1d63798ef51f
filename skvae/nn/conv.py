"""Convolutional encoders and decoders for images stored as flattened rows.

Both map 2-D tensors ``(n_rows, n_inputs)`` to ``(n_rows, n_outputs)``, like
:class:`~skvae.nn.MLP`, so an estimator can use them as its ``encoder`` and
``decoder`` without knowing that the rows are images. A row holds one image
of shape ``(channels, height, width)`` in C order, as
``images.reshape(n_images, -1)`` gives.
"""

import itertools
import math
import numbers

import torch
from torch import nn

from .mlp import ACTIVATIONS


def _check_positive_int(value, name):
    if not isinstance(value, numbers.Integral) or isinstance(value, bool) or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}.")
    return int(value)


def _check_options(channels, kernel_size, activation):
    channels = tuple(_check_positive_int(c, "each entry of channels") for c in channels)
    kernel_size = _check_positive_int(kernel_size, "kernel_size")
    if kernel_size % 2 == 0:
        # An even kernel has no centre pixel, so padding cannot keep the
        # feature maps aligned with the image.
        raise ValueError(f"kernel_size must be odd, got {kernel_size}.")
    if activation not in ACTIVATIONS:
        raise ValueError(
            f"activation must be one of {sorted(ACTIVATIONS)}, got {activation!r}."
        )
    return channels, kernel_size


def _check_image_shape(image_shape):
    """``(channels, height, width)`` from a 2- or 3-tuple of positive ints."""
    shape = tuple(image_shape)
    if len(shape) == 2:
        shape = (1, *shape)
    if len(shape) != 3:
        raise ValueError(
            "image_shape must be (channels, height, width) or (height, width), "
            f"got {image_shape!r}."
        )
    return tuple(_check_positive_int(s, "each entry of image_shape") for s in shape)


def _square_side(size):
    """The side of a square of ``size`` pixels, or None if there is none."""
    side = math.isqrt(size)
    return side if side * side == size else None


def _halved_sizes(height, width, n_halvings):
    """``(height, width)`` of the image and after each halving, rounding up.

    A stride-2 convolution with an odd kernel and "same" padding maps a side
    of n pixels to ceil(n / 2), odd sides included.
    """
    sizes = [(height, width)]
    for _ in range(n_halvings):
        h, w = sizes[-1]
        sizes.append(((h + 1) // 2, (w + 1) // 2))
    return sizes


class UntiedBias(nn.Module):
    """Add a learned offset to every value of a feature map, starting at zero.

    A convolution's bias is shared by all pixels of a channel; a decoder
    needs one per pixel, as a dense last layer has, to give each pixel its
    own mean and log-variance (an image's border is not its centre).

    Parameters
    ----------
    shape : tuple of int
        Shape of one feature map, ``(channels, height, width)``.
    """

    def __init__(self, shape):
        super().__init__()
        self.bias = nn.Parameter(torch.zeros(shape))

    def forward(self, x):
        return x + self.bias


class ConvEncoder(nn.Sequential):
    """A convolutional network from flattened images to a vector.

    Each row is reshaped to an image; strided convolutions, each followed by
    the activation, halve its resolution (8×8 → 4×4 → 2×2 with two of them),
    and a linear layer maps the last feature map to ``n_outputs``.

    Parameters
    ----------
    n_inputs : int
        Width of a row: channels × height × width of the image.
    n_outputs : int
        Width of the output (``2 * n_components`` for a VAE encoder).
    image_shape : tuple of int, default=None
        ``(channels, height, width)``, or ``(height, width)`` for one
        channel. None reads a row as a square single-channel image, which
        needs ``n_inputs`` to be a perfect square.
    channels : sequence of int, default=(32, 64)
        Output channels of each convolution, each of which halves the
        resolution (rounding up); empty for a single linear map.
    kernel_size : int, default=3
        Side of the square convolution kernels; odd.
    activation : {"relu", "silu", "tanh", "elu", "gelu"}, default="silu"
        Non-linearity after every convolution.

    Attributes
    ----------
    image_shape : tuple of int
        ``(channels, height, width)`` of the images.

    See Also
    --------
    ConvDecoder : The mirrored network, from a vector to images.

    Examples
    --------
    >>> import torch
    >>> from skvae.nn import ConvEncoder
    >>> encoder = ConvEncoder(64, 4)  # 8×8 grey images, as load_digits gives
    >>> encoder.image_shape
    (1, 8, 8)
    >>> encoder(torch.zeros(5, 64)).shape
    torch.Size([5, 4])

    Colour images need their shape; ``functools.partial`` fixes it and leaves
    the ``(n_inputs, n_outputs)`` signature that an estimator calls:

    >>> from functools import partial
    >>> make_encoder = partial(ConvEncoder, image_shape=(3, 32, 32))
    >>> make_encoder(3 * 32 * 32, 4)(torch.zeros(2, 3072)).shape
    torch.Size([2, 4])
    """

    def __init__(
        self,
        n_inputs,
        n_outputs,
        *,
        image_shape=None,
        channels=(32, 64),
        kernel_size=3,
        activation="silu",
    ):
        n_inputs = _check_positive_int(n_inputs, "n_inputs")
        n_outputs = _check_positive_int(n_outputs, "n_outputs")
        channels, kernel_size = _check_options(channels, kernel_size, activation)
        if image_shape is None:
            side = _square_side(n_inputs)
            if side is None:
                raise ValueError(
                    f"ConvEncoder cannot read rows of {n_inputs} values as square "
                    "single-channel images; pass image_shape=(channels, height, "
                    "width), e.g. functools.partial(ConvEncoder, "
                    "image_shape=(3, 32, 32))."
                )
            shape = (1, side, side)
        else:
            shape = _check_image_shape(image_shape)
            if math.prod(shape) != n_inputs:
                raise ValueError(
                    f"image_shape={shape} holds {math.prod(shape)} values, but "
                    f"the rows have n_inputs={n_inputs}."
                )
        n_channels, height, width = shape
        last_h, last_w = _halved_sizes(height, width, len(channels))[-1]
        layers = [nn.Unflatten(1, shape)]
        for c_in, c_out in itertools.pairwise((n_channels, *channels)):
            layers.append(
                nn.Conv2d(c_in, c_out, kernel_size, stride=2, padding=kernel_size // 2)
            )
            layers.append(ACTIVATIONS[activation]())
        layers.append(nn.Flatten(1))
        last_channels = channels[-1] if channels else n_channels
        layers.append(nn.Linear(last_channels * last_h * last_w, n_outputs))
        super().__init__(*layers)
        self.image_shape = shape


class ConvDecoder(nn.Sequential):
    """A convolutional network from a vector to flattened images.

    The mirror of :class:`ConvEncoder`: a linear layer maps the input to a
    small feature map, and transposed convolutions, with the activation
    before each, double its resolution back to exactly the image's height
    and width (odd sizes included). The last one has a bias per output
    value, as a dense layer has, not per channel. The output is flattened to
    rows.

    When ``n_outputs`` is ``k`` times the size of an image, the network
    outputs ``k`` maps per channel, flattened as ``k`` consecutive blocks of
    channels × height × width values: for ``k = 2`` (a heteroscedastic
    Gaussian decoder), ``out.chunk(2, -1)`` splits the means from the
    log-variances.

    Parameters
    ----------
    n_inputs : int
        Width of the input (``n_components`` for a VAE decoder).
    n_outputs : int
        Width of the output: ``k`` × channels × height × width.
    image_shape : tuple of int, default=None
        ``(channels, height, width)``, or ``(height, width)`` for one
        channel. None reads the output as one square single-channel image if
        ``n_outputs`` is a perfect square, else as two (mean and
        log-variance) if ``n_outputs / 2`` is.
    channels : sequence of int, default=(64, 32)
        Input channels of each transposed convolution, each of which doubles
        the resolution; the last one outputs ``k`` × channels maps. Empty
        for a single linear map.
    kernel_size : int, default=3
        Side of the square convolution kernels; odd.
    activation : {"relu", "silu", "tanh", "elu", "gelu"}, default="silu"
        Non-linearity before every transposed convolution.

    Attributes
    ----------
    image_shape : tuple of int
        ``(channels, height, width)`` of the images.
    n_maps : int
        ``k``: how many values the output holds per pixel and channel.

    See Also
    --------
    ConvEncoder : The mirrored network, from images to a vector.

    Examples
    --------
    >>> import torch
    >>> from skvae.nn import ConvDecoder
    >>> decoder = ConvDecoder(2, 28 * 28)
    >>> decoder.image_shape, decoder.n_maps
    ((1, 28, 28), 1)
    >>> decoder(torch.zeros(5, 2)).shape
    torch.Size([5, 784])

    A mean and a log-variance per pixel:

    >>> decoder = ConvDecoder(2, 2 * 28 * 28)
    >>> mean, log_var = decoder(torch.zeros(5, 2)).chunk(2, -1)
    >>> mean.shape, log_var.shape
    (torch.Size([5, 784]), torch.Size([5, 784]))
    """

    def __init__(
        self,
        n_inputs,
        n_outputs,
        *,
        image_shape=None,
        channels=(64, 32),
        kernel_size=3,
        activation="silu",
    ):
        n_inputs = _check_positive_int(n_inputs, "n_inputs")
        n_outputs = _check_positive_int(n_outputs, "n_outputs")
        channels, kernel_size = _check_options(channels, kernel_size, activation)
        if image_shape is None:
            # Unambiguous: 2 s^2 is never a perfect square.
            for n_maps in (1, 2):
                whole = n_outputs % n_maps == 0
                side = _square_side(n_outputs // n_maps) if whole else None
                if side is not None:
                    break
            else:
                raise ValueError(
                    f"ConvDecoder cannot read outputs of {n_outputs} values as one "
                    "or two square single-channel images; pass "
                    "image_shape=(channels, height, width), e.g. "
                    "functools.partial(ConvDecoder, image_shape=(3, 32, 32))."
                )
            shape = (1, side, side)
        else:
            shape = _check_image_shape(image_shape)
            n_maps, rest = divmod(n_outputs, math.prod(shape))
            if rest or not n_maps:
                raise ValueError(
                    f"n_outputs={n_outputs} is not a multiple of the "
                    f"{math.prod(shape)} values of image_shape={shape}."
                )
        n_channels, height, width = shape
        sizes = _halved_sizes(height, width, len(channels))[::-1]
        widths = (*channels, n_maps * n_channels)
        first_h, first_w = sizes[0]
        layers = [
            nn.Linear(n_inputs, widths[0] * first_h * first_w),
            nn.Unflatten(1, (widths[0], first_h, first_w)),
        ]
        steps = zip(itertools.pairwise(widths), itertools.pairwise(sizes), strict=True)
        for i, ((c_in, c_out), ((h_in, w_in), (h_out, w_out))) in enumerate(steps):
            layers.append(ACTIVATIONS[activation]())
            layers.append(
                nn.ConvTranspose2d(
                    c_in,
                    c_out,
                    kernel_size,
                    stride=2,
                    padding=kernel_size // 2,
                    # From n pixels it reaches 2 n - 1; one more row or
                    # column of output padding reaches an even side.
                    output_padding=(h_out - 2 * h_in + 1, w_out - 2 * w_in + 1),
                    # The last one's bias is untied, added below.
                    bias=i < len(channels) - 1,
                )
            )
        if channels:
            layers.append(UntiedBias((widths[-1], height, width)))
        layers.append(nn.Flatten(1))
        super().__init__(*layers)
        self.image_shape = shape
        self.n_maps = n_maps
