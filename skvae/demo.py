"""A short demonstration on scikit-learn's bundled digits.

Run it with ``python -m skvae.demo``. It fits a VAETransformer to the
dequantized digits and prints its held-out log-likelihood and reconstruction
error beside PCA and a Gaussian mixture, the tools it replaces.
"""

import time

import numpy as np
from sklearn.decomposition import PCA
from sklearn.mixture import GaussianMixture
from sklearn.model_selection import train_test_split

from skvae import VAETransformer
from skvae.datasets import load_digits_dequantized


def main():
    X = load_digits_dequantized(random_state=0).data
    X_train, X_test = train_test_split(X, test_size=0.2, random_state=0)

    vae = VAETransformer(
        n_components=10,
        n_importance_samples=500,
        random_state=0,
        verbose=1,
    )
    start = time.perf_counter()
    vae.fit(X_train)
    fit_seconds = time.perf_counter() - start

    pca = PCA(n_components=10).fit(X_train)
    gmm = GaussianMixture(n_components=5, random_state=0).fit(X_train)
    rows = [
        ("VAETransformer (10 latents)", vae.score(X_test), _mse(vae, X_test)),
        ("PCA (10 components)", pca.score(X_test), _mse(pca, X_test)),
        ("GaussianMixture (5 components)", gmm.score(X_test), None),
    ]
    print(f"\nDequantized digits, {len(X_test)} held-out rows")
    print(f"{'model':<32}{'log-likelihood (nats)':>24}{'reconstruction MSE':>22}")
    for name, loglik, mse in rows:
        mse_text = "n/a" if mse is None else f"{mse:.4f}"
        print(f"{name:<32}{loglik:>24.1f}{mse_text:>22}")
    print(f"\nVAETransformer trained {vae.n_iter_} epochs in {fit_seconds:.0f} s.")


def _mse(model, X):
    return float(np.mean((model.inverse_transform(model.transform(X)) - X) ** 2))


if __name__ == "__main__":
    main()
