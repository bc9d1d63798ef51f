"""INNAutoencoder against PCA, VAETransformer and a plain autoencoder.

Run by hand on a quiet machine, one thread (the script also sets
``torch.set_num_threads(1)``)::

    OMP_NUM_THREADS=1 python benchmarks/bench_inn.py reconstruction --epochs 150
    OMP_NUM_THREADS=1 python benchmarks/bench_inn.py density --epochs 300
    OMP_NUM_THREADS=1 python benchmarks/bench_inn.py speed
"""

import argparse
import time
import warnings

import numpy as np
import torch
from _common import (
    MACHINE,
    dequantized_digits_split,
    digits_split,
    paired_fit_ratio,
    reconstruction_mse,
)
from sklearn.decomposition import PCA
from sklearn.exceptions import ConvergenceWarning
from torch import nn

from skvae import INNAutoencoder, VAETransformer

warnings.simplefilter("ignore", ConvergenceWarning)

INN_SETTINGS = dict(
    n_blocks=4, subnet_layers=(64, 64), batch_size=128, learning_rate_init=1e-3
)


class PlainAutoencoder(nn.Module):
    """Deterministic MLP autoencoder trained on squared error."""

    def __init__(self, n_features, n_components, hidden):
        super().__init__()
        self.encoder = nn.Sequential(
            nn.Linear(n_features, hidden), nn.SiLU(), nn.Linear(hidden, n_components)
        )
        self.decoder = nn.Sequential(
            nn.Linear(n_components, hidden), nn.SiLU(), nn.Linear(hidden, n_features)
        )

    def fit(self, X, epochs, seed):
        torch.manual_seed(seed)
        optimizer = torch.optim.Adam(self.parameters(), lr=1e-3)
        X = torch.from_numpy(X).float()
        for _ in range(epochs):
            for batch in X[torch.randperm(len(X))].split(128):
                loss = (self.decoder(self.encoder(batch)) - batch).square().mean()
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
        return self

    def mse(self, X):
        with torch.no_grad():
            x = torch.from_numpy(X).float()
            return float((self.decoder(self.encoder(x)) - x).square().mean())


def n_parameters(module):
    return sum(p.numel() for p in module.parameters() if p.requires_grad)


def bench_reconstruction(epochs):
    X_train, X_test = digits_split()
    print("| k | PCA | INNAutoencoder | VAETransformer | plain autoencoder |")
    print("|---|---|---|---|---|")
    for k in (2, 5, 10, 20):
        pca = PCA(k).fit(X_train)
        inn = INNAutoencoder(
            n_components=k,
            **INN_SETTINGS,
            max_iter=epochs,
            n_iter_no_change=epochs,
            random_state=0,
        ).fit(X_train)
        vae = VAETransformer(
            n_components=k,
            encoder_layers=(128,),
            decoder_variance=1e-3,
            max_iter=epochs,
            n_iter_no_change=epochs,
            random_state=0,
        ).fit(X_train)
        # Hidden width chosen so the autoencoder has about the INN's parameters.
        n_inn = n_parameters(inn.module_)
        hidden = round(n_inn / (2 * X_train.shape[1] + 2 * k))
        ae = PlainAutoencoder(X_train.shape[1], k, hidden).fit(X_train, epochs, seed=0)
        print(
            f"| {k} | {reconstruction_mse(pca, X_test):.4f} | "
            f"{reconstruction_mse(inn, X_test):.4f} ({n_inn} parameters) | "
            f"{reconstruction_mse(vae, X_test):.4f} "
            f"({n_parameters(vae.module_)}) | "
            f"{ae.mse(X_test):.4f} ({n_parameters(ae)}) |"
        )


def bench_density(epochs):
    X_train, X_test = dequantized_digits_split()
    print("| model | held-out log-likelihood (nats) |")
    print("|---|---|")
    for n_blocks in (4, 8):
        start = time.perf_counter()
        inn = INNAutoencoder(
            n_components=X_train.shape[1],
            **{**INN_SETTINGS, "n_blocks": n_blocks},
            reconstruction_loss="mse",
            max_iter=epochs,
            early_stopping=True,
            n_iter_no_change=20,
            random_state=0,
        ).fit(X_train)
        print(
            f"| INNAutoencoder, {n_blocks} blocks, all 64 outputs kept "
            f"({inn.n_iter_} epochs, {time.perf_counter() - start:.0f} s) | "
            f"{inn.score(X_test):.1f} |"
        )
    print(f"| PCA, all components | {PCA().fit(X_train).score(X_test):.1f} |")


def bench_speed(repeats, epochs):
    X = digits_split()[0].astype(np.float32)
    ratio, (t_est, t_loop), ratios = paired_fit_ratio(
        lambda seed: INNAutoencoder(
            n_components=10,
            **INN_SETTINGS,
            max_iter=epochs,
            n_iter_no_change=epochs,
            random_state=seed,
        ),
        X,
        epochs,
        INN_SETTINGS["batch_size"],
        INN_SETTINGS["learning_rate_init"],
        repeats,
    )
    print("| measurement | skvae (s) | plain torch (s) | median ratio |")
    print("|---|---|---|---|")
    print(
        f"| INNAutoencoder fit, digits, {epochs} epochs ({repeats} pairs; ratios "
        f"{', '.join(f'{r:.3f}' for r in ratios)}) | {t_est:.2f} | "
        f"{t_loop:.2f} | {ratio:.3f} |"
    )


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("part", choices=["reconstruction", "density", "speed"])
    parser.add_argument("--epochs", type=int, default=200)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    torch.set_num_threads(1)
    print(
        f"{time.strftime('%Y-%m-%d')}, {MACHINE}, torch {torch.__version__}, "
        f"{torch.get_num_threads()} thread(s)\n"
    )
    if args.part == "reconstruction":
        bench_reconstruction(args.epochs)
    elif args.part == "density":
        bench_density(args.epochs)
    else:
        bench_speed(args.repeats, epochs=30)


if __name__ == "__main__":
    main()
