"""scikit-learn's estimator checks, in full, for every skvae estimator."""

from functools import partial

from sklearn.utils.estimator_checks import parametrize_with_checks
from torch import nn

from skvae import INNAutoencoder, IsometricVAE, VAETransformer


class OwnEncoder(nn.Module):
    """A user's network, as the estimators call it: (n_inputs, n_outputs)."""

    def __init__(self, n_inputs, n_outputs, hidden=8):
        super().__init__()
        self.hidden = nn.Linear(n_inputs, hidden)
        self.out = nn.Linear(hidden, n_outputs)

    def forward(self, x):
        return self.out(nn.functional.softplus(self.hidden(x)))


class TinySubnet(nn.Module):
    """A user's coupling subnet, which the estimator may not look inside."""

    def __init__(self, n_inputs, n_outputs):
        super().__init__()
        self.hidden = nn.Linear(n_inputs, 4)
        self.out = nn.Linear(4, n_outputs)

    def forward(self, x):
        return self.out(nn.functional.softplus(self.hidden(x)))


class OwnDecoder(nn.Module):
    """A residual network: a linear map plus a tanh correction."""

    def __init__(self, n_inputs, n_outputs):
        super().__init__()
        self.linear = nn.Linear(n_inputs, n_outputs)
        self.correction = nn.Sequential(
            nn.Linear(n_inputs, 6), nn.Tanh(), nn.Linear(6, n_outputs)
        )

    def forward(self, z):
        return self.linear(z) + self.correction(z)


# Small networks and few epochs keep the checks fast; the checks themselves
# are scikit-learn's, none skipped or expected to fail.
ESTIMATORS = [
    VAETransformer(
        encoder_layers=(8,), max_iter=5, batch_size=32, n_importance_samples=8
    ),
    INNAutoencoder(n_blocks=2, subnet_layers=(8,), max_iter=5, batch_size=32),
    INNAutoencoder(n_blocks=2, subnet=TinySubnet, max_iter=5, batch_size=32),
    IsometricVAE(encoder_layers=(8,), max_iter=5, batch_size=32),
    IsometricVAE(noise="per_feature", encoder_layers=(8,), max_iter=5, batch_size=32),
    # Networks the user brings: a class, and a callable with extra arguments.
    VAETransformer(
        encoder=partial(OwnEncoder, hidden=4),
        decoder=OwnDecoder,
        max_iter=5,
        batch_size=32,
        n_importance_samples=8,
    ),
    IsometricVAE(encoder=OwnEncoder, decoder=OwnDecoder, max_iter=5, batch_size=32),
]


@parametrize_with_checks(ESTIMATORS)
def test_sklearn_compatible(estimator, check):
    check(estimator)
