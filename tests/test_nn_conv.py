"""Convolutional encoders and decoders on flattened images."""

import copy
import math
import pickle
from functools import partial

import numpy as np
import pytest
import torch
from sklearn.base import BaseEstimator, clone

from skvae.nn import ConvDecoder, ConvEncoder

# (image_shape passed, the (channels, height, width) it means)
SHAPES = [
    (None, (1, 8, 8)),
    (None, (1, 28, 28)),
    ((5, 7), (1, 5, 7)),
    ((3, 32, 32), (3, 32, 32)),
    ((2, 1, 1), (2, 1, 1)),
]


def _rows(n_rows, n_columns, seed=0, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n_rows, n_columns, generator=g, dtype=dtype)


@pytest.mark.parametrize(("image_shape", "full_shape"), SHAPES)
@pytest.mark.parametrize("n_rows", [1, 4])
def test_output_shapes(image_shape, full_shape, n_rows):
    size = math.prod(full_shape)
    encoder = ConvEncoder(size, 6, image_shape=image_shape)
    assert encoder.image_shape == full_shape
    assert encoder(_rows(n_rows, size)).shape == (n_rows, 6)
    for n_maps in (1, 2, 3):
        if image_shape is None and n_maps == 3:
            continue
        decoder = ConvDecoder(3, n_maps * size, image_shape=image_shape)
        assert (decoder.image_shape, decoder.n_maps) == (full_shape, n_maps)
        assert decoder(_rows(n_rows, 3)).shape == (n_rows, n_maps * size)


def test_decoder_maps_are_blocks_of_whole_images():
    # Each block of the output is one map of every channel, so chunk(2, -1)
    # splits means from log-variances: with the weights of the second block
    # zeroed, only its untied bias reaches it.
    decoder = ConvDecoder(2, 2 * 3 * 5 * 7, image_shape=(3, 5, 7))
    last_conv, untied = decoder[-3], decoder[-2]
    with torch.no_grad():
        last_conv.weight[:, 3:] = 0.0
        untied.bias[3:] = torch.arange(3 * 5 * 7.0).reshape(3, 5, 7)
    mean, log_var = decoder(_rows(4, 2)).chunk(2, -1)
    torch.testing.assert_close(log_var, torch.arange(3 * 5 * 7.0).expand(4, -1))
    assert mean.std(0).min() > 0


def test_no_convolutions_is_a_linear_map():
    encoder = ConvEncoder(64, 3, channels=())
    decoder = ConvDecoder(3, 64, channels=())
    for net in (encoder, decoder):
        layers = [m for m in net if list(m.parameters(recurse=False))]
        assert [type(m) for m in layers] == [torch.nn.Linear]
    assert decoder(_rows(2, 3)).shape == (2, 64)


@pytest.mark.parametrize("channels", [(8,), (4, 8, 16)])
def test_channels_set_the_depth(channels):
    encoder = ConvEncoder(28 * 28, 2, channels=channels, kernel_size=5)
    decoder = ConvDecoder(2, 28 * 28, channels=channels[::-1], kernel_size=5)
    convs = [m for m in encoder if isinstance(m, torch.nn.Conv2d)]
    assert [c.out_channels for c in convs] == list(channels)
    assert encoder(_rows(2, 784)).shape == (2, 2)
    assert decoder(_rows(2, 2)).shape == (2, 784)


def test_float64():
    encoder = ConvEncoder(5 * 7, 4, image_shape=(5, 7)).to(torch.float64)
    decoder = ConvDecoder(2, 2 * 5 * 7, image_shape=(5, 7)).to(torch.float64)
    x = _rows(3, 35, dtype=torch.float64)
    code = encoder(x)
    assert code.dtype == torch.float64
    assert decoder(code[:, :2]).dtype == torch.float64


def test_float64_copy_matches_float32():
    # The estimators evaluate a float64 copy of a network trained in float32.
    encoder = ConvEncoder(64, 4)
    decoder = ConvDecoder(2, 64)
    x = _rows(5, 64)
    for net, inputs in ((encoder, x), (decoder, x[:, :2])):
        wide = copy.deepcopy(net).to(torch.float64)
        torch.testing.assert_close(
            wide(inputs.double()), net(inputs).double(), rtol=1e-5, atol=1e-5
        )


def test_gradient_reaches_every_parameter():
    encoder = ConvEncoder(28 * 28, 4)
    decoder = ConvDecoder(2, 2 * 28 * 28)
    x = _rows(3, 784)
    reconstruction = decoder(encoder(x)[:, :2])
    ((reconstruction[:, :784] - x) ** 2).sum().backward()
    for net in (encoder, decoder):
        for name, parameter in net.named_parameters():
            assert parameter.grad is not None, name
            assert parameter.grad.abs().sum() > 0, name


def test_rows_are_independent():
    encoder = ConvEncoder(64, 4)
    decoder = ConvDecoder(2, 64)
    x = _rows(5, 64)
    torch.testing.assert_close(encoder(x)[2:3], encoder(x[2:3]))
    torch.testing.assert_close(decoder(x[:, :2])[4:], decoder(x[4:, :2]))


def test_rows_are_read_in_c_order():
    # Rows hold images as images.reshape(n_images, -1) lays them out.
    encoder = ConvEncoder(5 * 7, 4, image_shape=(5, 7))
    images = _rows(2, 35).reshape(2, 5, 7)
    flat = images.reshape(2, -1)
    unflattened = encoder[0](flat)
    torch.testing.assert_close(unflattened[:, 0], images)


@pytest.mark.parametrize(
    ("make", "match"),
    [
        (lambda: ConvEncoder(63, 4), "image_shape"),
        (lambda: ConvDecoder(2, 63), "image_shape"),
        (lambda: ConvDecoder(2, 3 * 64), "image_shape"),
        (lambda: ConvEncoder(64, 4, image_shape=(3, 8, 8)), "192 values"),
        (lambda: ConvDecoder(2, 100, image_shape=(3, 8, 8)), "multiple"),
        (lambda: ConvDecoder(2, 100, image_shape=(8, 8, 8)), "multiple"),
        (lambda: ConvEncoder(64, 4, image_shape=(1, 1, 8, 8)), "image_shape"),
        (lambda: ConvEncoder(64, 4, image_shape=(0, 8)), "image_shape"),
        (lambda: ConvEncoder(64, 0), "n_outputs"),
        (lambda: ConvDecoder(0, 64), "n_inputs"),
        (lambda: ConvEncoder(64.0, 4), "n_inputs"),
        (lambda: ConvEncoder(64, 4, channels=(8, 0)), "channels"),
        (lambda: ConvEncoder(64, 4, kernel_size=4), "odd"),
        (lambda: ConvDecoder(2, 64, activation="swish"), "activation"),
    ],
)
def test_bad_sizes_and_options_raise(make, match):
    with pytest.raises(ValueError, match=match):
        make()


def test_numpy_integer_sizes_are_accepted():
    encoder = ConvEncoder(np.int64(64), np.int64(4), image_shape=np.array([8, 8]))
    assert encoder.image_shape == (1, 8, 8)
    assert all(type(s) is int for s in encoder.image_shape)


@pytest.mark.parametrize(
    ("net_class", "n_inputs", "n_outputs"),
    [(ConvEncoder, 3 * 6 * 5, 4), (ConvDecoder, 2, 2 * 3 * 6 * 5)],
)
def test_deepcopy_and_pickle_keep_the_function(net_class, n_inputs, n_outputs):
    net = net_class(n_inputs, n_outputs, image_shape=(3, 6, 5))
    x = _rows(3, n_inputs)
    expected = net(x)
    for twin in (copy.deepcopy(net), pickle.loads(pickle.dumps(net))):
        assert twin.image_shape == net.image_shape
        torch.testing.assert_close(twin(x), expected, rtol=0, atol=0)


class _Holder(BaseEstimator):
    """Stands in for an estimator with encoder= and decoder= parameters."""

    def __init__(self, encoder=None, decoder=None):
        self.encoder = encoder
        self.decoder = decoder


def test_partial_with_image_shape_survives_clone_and_pickle():
    estimator = _Holder(
        encoder=partial(ConvEncoder, image_shape=(3, 4, 4), channels=(8,)),
        decoder=partial(ConvDecoder, image_shape=(3, 4, 4), channels=(8,)),
    )
    for twin in (clone(estimator), pickle.loads(pickle.dumps(estimator))):
        torch.manual_seed(1)
        encoder, decoder = twin.encoder(48, 4), twin.decoder(2, 96)
        torch.manual_seed(1)
        original = estimator.encoder(48, 4), estimator.decoder(2, 96)
        assert encoder.image_shape == decoder.image_shape == (3, 4, 4)
        x = _rows(2, 48)
        torch.testing.assert_close(encoder(x), original[0](x), rtol=0, atol=0)
        torch.testing.assert_close(
            decoder(x[:, :2]), original[1](x[:, :2]), rtol=0, atol=0
        )


def test_the_global_seed_fixes_the_initial_weights():
    # The estimators seed construction through torch.random.fork_rng.
    with torch.random.fork_rng():
        torch.manual_seed(3)
        first = ConvDecoder(2, 64)
    with torch.random.fork_rng():
        torch.manual_seed(3)
        second = ConvDecoder(2, 64)
    for a, b in zip(first.parameters(), second.parameters(), strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
