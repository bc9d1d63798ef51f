"""Tests of the invertible blocks, the invertible network and its autoencoder."""

import numpy as np
import pytest
import torch
from sklearn.decomposition import PCA

from skvae.nn.coupling import (
    GATE_GAIN,
    AffineCoupling,
    FixedAffine,
    FixedOrthogonal,
    FixedPermutation,
    PrincipalSplit,
    soft_clamp,
)
from skvae.nn.inn import INNAutoencoderModule, InvertibleNetwork

SMALL = {"subnet_layers": (8, 8)}


def seeded(seed):
    return torch.Generator().manual_seed(seed)


def randomise_(module, seed, scale=0.5):
    """Replace every parameter (zero gates included) by seeded noise.

    Gates are stored divided by their gain, so that they get the same
    effective scale as every other parameter.
    """
    generator = seeded(seed)
    with torch.no_grad():
        for name, param in module.named_parameters():
            noise = torch.randn(param.shape, generator=generator, dtype=param.dtype)
            gain = GATE_GAIN if name.endswith("gate") else 1.0
            param.copy_(scale * noise / gain)
    return module


def rows(n_rows, n_features, dtype=torch.float64, seed=0):
    return torch.randn(n_rows, n_features, generator=seeded(seed), dtype=dtype)


def jacobian_log_dets(function, x):
    """log|det J| of a map of rows at each row of ``x``, from autograd."""
    return torch.stack(
        [
            torch.linalg.slogdet(
                torch.autograd.functional.jacobian(lambda r: function(r[None])[0], row)
            ).logabsdet
            for row in x
        ]
    )


def random_affine_(layer, seed, n_features):
    """Give a fixed input layer a random shift, rotation or basis, and scales."""
    generator = seeded(seed)
    shift = torch.randn(n_features, generator=generator)
    if isinstance(layer, PrincipalSplit):
        k = layer.n_components
        basis = torch.randn(n_features, k, generator=generator, dtype=torch.float64)
        positions = torch.randperm(n_features, generator=generator)[:k]
        layer.set_(shift, torch.linalg.qr(basis)[0], positions, 0.3)
        return layer
    layer.set_(
        shift,
        torch.linalg.qr(torch.randn(n_features, n_features, generator=generator))[0],
        0.5 * torch.randn(n_features, generator=generator),
    )
    return layer


def test_soft_clamp_is_bounded_odd_and_follows_its_formula():
    clamp = 2.0
    a = torch.tensor([-1e8, -5.0, 0.0, clamp, 5.0, 1e8], dtype=torch.float64)
    out = soft_clamp(a, clamp)
    assert out.abs().max() < clamp
    assert out[-1] > clamp - 1e-6
    torch.testing.assert_close(soft_clamp(-a, clamp), -out)
    # atan(1) = pi / 4, so the clamp maps itself to half its value.
    assert out[3].item() == pytest.approx(clamp / 2)
    assert torch.all(out.diff() > 0)


@pytest.mark.parametrize("n_features", [1, 2, 3, 5])
def test_coupling_and_one_block_network_are_identity_at_initialisation(n_features):
    x = rows(6, n_features, torch.float32)
    y, log_det = AffineCoupling(n_features, **SMALL, generator=seeded(0))(x)
    assert torch.equal(y, x)
    assert torch.equal(log_det, torch.zeros(6))
    y, log_dets = InvertibleNetwork(n_features, 1, **SMALL, generator=seeded(0))(x)
    assert torch.equal(y, x)
    assert torch.equal(log_dets, torch.zeros(6, 1))


@pytest.mark.parametrize("n_features", [1, 2, 3, 5])
@pytest.mark.parametrize("mixing", ["permutation", "orthogonal"])
def test_network_round_trip(n_features, mixing):
    net = InvertibleNetwork(n_features, 3, **SMALL, mixing=mixing, generator=seeded(0))
    randomise_(net, seed=1, scale=0.3)
    random_affine_(net.input_layer, seed=1, n_features=n_features)
    x32 = rows(50, n_features, torch.float32)
    y32, _ = net(x32)
    assert (y32 - x32).abs().max() > 0.1
    assert (net.inverse(y32) - x32).abs().max() < 1e-4
    net.double()
    x64 = x32.double()
    y64, log_dets = net(x64)
    assert y64.dtype == log_dets.dtype == torch.float64
    assert (net.inverse(y64) - x64).abs().max() < 1e-10
    assert (net(net.inverse(x64))[0] - x64).abs().max() < 1e-10


@pytest.mark.parametrize("n_features", [1, 2, 3, 5])
def test_block_log_dets_match_autograd_jacobian(n_features):
    generator = seeded(0)
    coupling = AffineCoupling(n_features, **SMALL, generator=generator)
    blocks = [
        randomise_(coupling.double(), seed=2),
        FixedPermutation(n_features, generator=generator),
        FixedOrthogonal(n_features, generator=generator).double(),
        random_affine_(FixedAffine(n_features), seed=2, n_features=n_features).double(),
    ]
    x = rows(4, n_features)
    for block in blocks:
        expected = jacobian_log_dets(lambda h, block=block: block(h)[0], x)
        torch.testing.assert_close(block(x)[1], expected, rtol=0, atol=1e-10)
    assert coupling(x)[1].abs().max() > 0.01


@pytest.mark.parametrize("mixing", ["permutation", "orthogonal"])
def test_network_log_dets_per_block_match_autograd_jacobian(mixing):
    net = InvertibleNetwork(3, n_blocks=3, **SMALL, mixing=mixing, generator=seeded(0))
    randomise_(net.double(), seed=3)
    random_affine_(net.input_layer, seed=3, n_features=3)
    x = rows(4, 3)
    outputs, log_dets = net.layer_outputs(x)
    assert len(outputs) == 4
    torch.testing.assert_close(outputs[0], x)
    torch.testing.assert_close(outputs[-1], net(x)[0])
    torch.testing.assert_close(log_dets, net(x)[1])
    for i, coupling in enumerate(net.couplings):
        mixing_layer = net.mixings[i] if i < len(net.mixings) else None

        def block(h, i=i, coupling=coupling, mixing_layer=mixing_layer):
            # The fixed input layer belongs to the first block.
            y = coupling(net.input_layer(h)[0] if i == 0 else h)[0]
            return y if mixing_layer is None else mixing_layer(y)[0]

        expected = jacobian_log_dets(block, outputs[i])
        torch.testing.assert_close(log_dets[:, i], expected, rtol=0, atol=1e-10)
    expected = jacobian_log_dets(lambda h: net(h)[0], x)
    torch.testing.assert_close(log_dets.sum(1), expected, rtol=0, atol=1e-10)


def test_fixed_affine_is_exact_in_float64_and_volume_preserving_without_scales():
    layer = random_affine_(FixedAffine(5), seed=5, n_features=5)
    x = rows(20, 5)
    layer.double()
    eye = torch.eye(5, dtype=torch.float64)
    assert (layer.rotation.T @ layer.rotation - eye).abs().max() < 1e-13
    y, log_det = layer(x)
    assert (layer.inverse(y) - x).abs().max() < 1e-12
    torch.testing.assert_close(log_det, layer.log_scale.sum().expand(20))
    layer.set_(layer.shift, layer.rotation)
    assert torch.equal(layer(x)[1], torch.zeros(20, dtype=torch.float64))


@pytest.mark.parametrize("mixing", ["permutation", "orthogonal"])
@pytest.mark.parametrize("n_components", [2, 4])
def test_initialisation_from_data_starts_the_network_as_pca(mixing, n_components):
    generator = seeded(0)
    x = rows(300, 6, torch.float32) @ torch.diag(torch.tensor([3, 2, 1, 0.5, 0.2, 0.1]))
    x = x @ torch.linalg.qr(torch.randn(6, 6, generator=generator))[0] + 1.0
    inn = INNAutoencoderModule(6, n_components, n_blocks=3, **SMALL, mixing=mixing)
    inn.initialize_from_data(x)
    pca = PCA(n_components).fit(x.numpy())
    scale = x.var(0, unbiased=False).mean().sqrt()
    torch.testing.assert_close(inn.data_scale, scale, rtol=1e-5, atol=0)
    with torch.no_grad():
        code = inn.encode(x)
        reconstruction = inn.decode(code)
    # Principal-component scores, up to the sign of each axis.
    np.testing.assert_allclose(
        np.abs(code.numpy()), np.abs(pca.transform(x.numpy())), atol=1e-4
    )
    np.testing.assert_allclose(
        reconstruction.numpy(),
        pca.inverse_transform(pca.transform(x.numpy())),
        atol=1e-4,
    )
    # Fixed linear layers only: the volume term is the same for every row.
    log_dets = inn.net(x)[1].detach()
    assert torch.equal(log_dets[:, 1:], torch.zeros(300, 2))
    expected = jacobian_log_dets(lambda h: inn.net(h)[0], x[:3].double().float())
    torch.testing.assert_close(log_dets[:, 0], expected[0].expand(300))
    # The learned widths start where the untrained network puts the data: a
    # Gaussian fitted to the rows.
    y = inn.net(x)[0].detach()
    torch.testing.assert_close(
        inn.prior_log_std.detach().exp(),
        y.square().mean(0).sqrt(),
        rtol=1e-4,
        atol=0,
    )
    residual = (x - reconstruction).square().mean().sqrt() / scale
    torch.testing.assert_close(
        inn.noise_log_std.detach().exp().float(), residual, rtol=1e-4, atol=0
    )
    # Nothing discarded, nothing to choose: a plain flow in the data's axes.
    flow = INNAutoencoderModule(6, 6, n_blocks=3, **SMALL, mixing=mixing)
    flow.initialize_from_data(x)
    torch.testing.assert_close(
        flow.net.input_layer(x)[0], (x - x.mean(0)) / scale, rtol=0, atol=1e-5
    )


@pytest.mark.parametrize(("n_features", "n_components"), [(2, 1), (5, 2), (40, 3)])
def test_principal_split_is_an_exact_bijection(n_features, n_components):
    layer = random_affine_(
        PrincipalSplit(n_features, n_components), seed=n_features, n_features=n_features
    )
    x32 = rows(6, n_features, torch.float32)
    y32, _ = layer(x32)
    assert (layer.inverse(y32) - x32).abs().max() < 1e-5
    layer.double()
    x = x32.double()
    y, log_det = layer(x)
    assert (layer.inverse(y) - x).abs().max() < 1e-12
    torch.testing.assert_close(
        log_det, jacobian_log_dets(lambda h: layer(h)[0], x), rtol=0, atol=1e-10
    )
    # Scores where the positions say, the residual's entries elsewhere.
    centred = x - layer.shift
    scores = centred @ layer.basis
    scale = layer.log_scale.exp()
    torch.testing.assert_close(y[:, layer.code_positions], scale * scores)
    residual = centred - scores @ layer.basis.T
    others = y[:, layer.residual_positions] / scale
    assert all(
        any(torch.allclose(column, residual[:, j]) for j in range(n_features))
        for column in others.T
    )


def test_input_layer_costs_no_square_matrix_for_a_small_code():
    # A rotation of 784 features would cost 784 ** 2 per row; the split
    # costs a few times 784 per score.
    layer = INNAutoencoderModule(784, 10, n_blocks=1).net.input_layer
    assert isinstance(layer, PrincipalSplit)
    assert max(b.numel() for b in layer.buffers()) == 784 * 10
    assert INNAutoencoderModule(8, 8, n_blocks=1).net.input_layer.n_components == 0
    rotated = INNAutoencoderModule(8, 4, n_blocks=2, mixing="orthogonal")
    assert isinstance(rotated.net.input_layer, FixedAffine)


def test_orthogonal_mixing_stays_orthogonal_in_float64():
    mix = FixedOrthogonal(6, generator=seeded(0)).double()
    eye = torch.eye(6, dtype=torch.float64)
    assert (mix.weight.T @ mix.weight - eye).abs().max() < 1e-13


def test_orthogonal_mixing_is_haar_distributed():
    # Without the sign correction, QR fixes the sign of the first entry.
    first = torch.stack(
        [FixedOrthogonal(3, generator=seeded(seed)).weight[0, 0] for seed in range(200)]
    )
    assert first.mean().abs() < 0.15
    assert 0.4 < (first > 0).double().mean() < 0.6


def test_permutation_is_a_permutation():
    perm = FixedPermutation(7, generator=seeded(0))
    x = rows(2, 7)
    y, _ = perm(x)
    assert not torch.equal(y, x)
    torch.testing.assert_close(y.sort(dim=1).values, x.sort(dim=1).values)
    assert torch.equal(perm.inverse(y), x)


def test_network_parameter_count_does_not_depend_on_n_components():
    # Besides the network: one learned width per output and one for the
    # reconstruction noise.
    for k in range(1, 6):
        module = INNAutoencoderModule(5, k, **SMALL)
        n_network = sum(p.numel() for p in module.net.parameters())
        n_total = sum(p.numel() for p in module.parameters())
        assert n_total - n_network == 5 + 1
    counts = {
        sum(p.numel() for p in INNAutoencoderModule(5, k, **SMALL).net.parameters())
        for k in range(1, 6)
    }
    assert len(counts) == 1


def test_autoencoder_is_exact_when_nothing_is_discarded():
    inn = INNAutoencoderModule(4, 4, n_blocks=2, **SMALL, generator=seeded(0))
    randomise_(inn.double(), seed=4)
    x = rows(10, 4)
    assert (inn.encode(x) - x).abs().max() > 0.1
    assert (inn.decode(inn.encode(x)) - x).abs().max() < 1e-10


def test_density_integrates_to_one_in_2d():
    inn = INNAutoencoderModule(
        2, 1, n_blocks=2, **SMALL, discarded_std=0.5, generator=seeded(1)
    )
    randomise_(inn.double(), seed=1)
    half_width = 12.0
    axis = torch.linspace(-half_width, half_width, 400, dtype=torch.float64)
    grid = torch.cartesian_prod(axis, axis)
    with torch.no_grad():
        mass = (inn.log_prob(grid).exp().sum() * (axis[1] - axis[0]) ** 2).item()
        samples = inn.sample(20000, seeded(0))
        log_dets = inn.net(samples)[1].sum(1)
    # The box must hold the mass, and the map must not preserve volume, for
    # the test to mean anything.
    inside = (samples.abs().max(1).values < half_width).double().mean().item()
    assert inside > 0.999
    assert log_dets.std() > 0.2
    assert mass == pytest.approx(1.0, abs=0.02)


def test_density_integrates_to_one_with_one_feature():
    inn = randomise_(INNAutoencoderModule(1, 1, n_blocks=3).double(), seed=6)
    x = torch.linspace(-30, 30, 20001, dtype=torch.float64)[:, None]
    with torch.no_grad():
        density = inn.log_prob(x).exp()
    assert density[[0, -1]].max() < 1e-8
    assert torch.trapezoid(density, x[:, 0]).item() == pytest.approx(1.0, abs=1e-6)
    # Three affine maps compose to one: the density is a non-standard Gaussian.
    assert inn.net(x[:1])[1].sum().abs() > 0.1


@pytest.mark.parametrize("n_features", [1, 3])
def test_samples_follow_the_prior_in_latent_space(n_features):
    inn = INNAutoencoderModule(n_features, 1, **SMALL, generator=seeded(0))
    randomise_(inn, seed=7)
    samples = inn.sample(4000, seeded(0))
    assert samples.shape == (4000, n_features)
    assert samples.dtype == torch.float32
    torch.testing.assert_close(inn.sample(4000, seeded(0)), samples)
    y = inn.net(samples)[0].detach()
    prior_std = inn.prior_log_std.detach().exp()
    assert (prior_std - 1).abs().max() > 0.05
    torch.testing.assert_close(y.std(0), prior_std, rtol=0.05, atol=0)


@pytest.mark.parametrize("reconstruction_loss", ["l1", "mse"])
@pytest.mark.parametrize("discarded_std", ["learned", 0.01])
def test_loss_is_the_documented_combination(reconstruction_loss, discarded_std):
    inn = INNAutoencoderModule(
        3,
        2,
        n_blocks=2,
        **SMALL,
        reconstruction_loss=reconstruction_loss,
        likelihood_weight=0.3,
        discarded_std=discarded_std,
        generator=seeded(0),
    )
    randomise_(inn.double(), seed=8)
    inn.data_scale.fill_(2.0)
    x = rows(5, 3)
    residual = x - inn.decode(inn.encode(x))
    assert residual.abs().sum(1).min() > 1e-3
    # The noise scale is relative to the data's; fixed, it is discarded_std.
    noise_std = 2.0 * inn.noise_log_std.exp()
    if discarded_std != "learned":
        assert noise_std.item() == pytest.approx(0.02)
    if reconstruction_loss == "l1":
        noise = torch.distributions.Laplace(0.0, noise_std)
    else:
        noise = torch.distributions.Normal(0.0, noise_std)
    nll = -noise.log_prob(residual).sum(1)
    loss = inn.loss(x, None)
    torch.testing.assert_close(loss, (nll - 0.3 * inn.log_prob(x)) / 3)
    loss.mean().backward()
    for param in inn.parameters():
        assert torch.isfinite(param.grad).all()
        assert param.grad.abs().max() > 0


def test_loss_is_the_negative_log_likelihood_when_nothing_is_discarded():
    inn = INNAutoencoderModule(3, 3, n_blocks=2, **SMALL, generator=seeded(0))
    randomise_(inn.double(), seed=8)
    x = rows(5, 3)
    torch.testing.assert_close(inn.loss(x, None), -inn.log_prob(x) / 3)


def test_reconstruction_gradient_flows_through_the_encoder_too():
    inn = INNAutoencoderModule(
        3,
        1,
        n_blocks=2,
        **SMALL,
        reconstruction_loss="l1",
        likelihood_weight=0.0,
        discarded_std=0.01,
        generator=seeded(0),
    )
    randomise_(inn.double(), seed=11)
    x = rows(5, 3).requires_grad_()
    inn.loss(x, None).sum().backward()
    residual = x - inn.decode(inn.encode(x))
    # With the code detached, the gradient would be sign(residual) / (3 * 0.01).
    assert (x.grad - residual.sign() / 0.03).abs().max() > 1.0


@pytest.mark.parametrize("discarded_std", ["learned", 0.01])
def test_log_prob_is_the_change_of_variables(discarded_std):
    inn = INNAutoencoderModule(
        3, 1, **SMALL, discarded_std=discarded_std, generator=seeded(0)
    )
    randomise_(inn.double(), seed=9)
    if discarded_std != "learned":
        expected_std = torch.tensor([1.0, 0.01, 0.01], dtype=torch.float64)
        torch.testing.assert_close(inn.prior_log_std.exp(), expected_std)
    x = rows(4, 3)
    y = inn.net(x)[0]
    prior = torch.distributions.Normal(0.0, inn.prior_log_std.exp())
    expected = prior.log_prob(y).sum(1) + jacobian_log_dets(lambda h: inn.net(h)[0], x)
    torch.testing.assert_close(inn.log_prob(x, seeded(0)), expected)


def test_one_feature_works_end_to_end():
    inn = randomise_(INNAutoencoderModule(1, 1, **SMALL), seed=10)
    x = rows(7, 1, torch.float32)
    code = inn.encode(x)
    assert code.shape == (7, 1)
    assert (code - x).abs().max() > 0.1
    assert (inn.decode(code) - x).abs().max() < 1e-4
    assert inn.loss(x, None).shape == inn.log_prob(x, None).shape == (7,)
    assert inn.sample(3, seeded(0)).shape == (3, 1)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"n_components": 0}, "n_components"),
        ({"n_components": 4}, "n_components"),
        ({"n_blocks": 0}, "n_blocks"),
        ({"mixing": "shuffle"}, "mixing"),
        ({"reconstruction_loss": "huber"}, "reconstruction_loss"),
        ({"discarded_std": "fitted"}, "discarded_std"),
    ],
)
def test_bad_arguments_raise(kwargs, match):
    params = {"n_features": 3, "n_components": 2, **kwargs}
    with pytest.raises(ValueError, match=match):
        INNAutoencoderModule(**params)


@pytest.mark.parametrize(
    "make, key, bad, message",
    [
        (
            lambda: FixedPermutation(4, generator=seeded(0)),
            "perm",
            torch.tensor([0, 0, 1, 2]),
            "not a permutation",
        ),
        (
            lambda: FixedPermutation(4, generator=seeded(0)),
            "inverse_perm",
            torch.tensor([0, 1, 2, 3]),
            "not a permutation",
        ),
        (
            lambda: FixedOrthogonal(3, generator=seeded(0)),
            "weight",
            2 * torch.eye(3),
            "not an orthogonal",
        ),
        (lambda: FixedAffine(3), "rotation", torch.ones(3, 3), "not an orthogonal"),
        (
            lambda: FixedAffine(3),
            "rotation",
            torch.full((3, 3), float("nan")),
            "not an orthogonal",
        ),
    ],
)
def test_mixing_layers_load_only_what_keeps_them_invertible(make, key, bad, message):
    layer = make()
    # A valid state loads.
    make().load_state_dict(layer.state_dict())
    state = layer.state_dict()
    state[key] = bad
    with pytest.raises(RuntimeError, match=message):
        make().load_state_dict(state)
