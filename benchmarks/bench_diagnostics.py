"""skvae.diagnostics on data whose truth is known.

Run by hand on a quiet machine (tests never time anything)::

    python benchmarks/bench_diagnostics.py mobius        [--seeds 5] [--prior-shape 8]
    python benchmarks/bench_diagnostics.py encoder-size  [--seeds 3]

``mobius``: Reizinger et al. (2022) recover Möbius-mixed uniform sources
(d = 3) with a near-deterministic VAE, MCC 0.96 at decoder variance 1e-4
(60,000 samples, MLPs of 2 hidden layers of width 30, a uniform prior, about
20 seeds). Here a :class:`~skvae.VAETransformer` (standard normal prior, or
with ``--prior-shape`` a flatter generalized-normal one) is trained per seed
and decoder variance, each seed drawing its own mixing; the
table gives the MCC between true sources and codes on held-out rows, the
decoder's mean IMA contrast (0 for the true mixing), the self-consistency
errors and the training time, with the MCC after the best rotation of the
codes (an oracle), linear baselines (whitened PCA, FastICA) and, per fit,
how much random rotations of the latents change the IMA contrast and the
MCC (the standard normal prior cannot tell rotations apart otherwise).

``encoder-size``: Pareek and Risteski predict that a strongly invertible
generator needs a smaller encoder than a non-invertible one. On
``make_latent_gaussian(invertible=True)`` and ``invertible=False`` a
VAETransformer with a fixed decoder is trained for each encoder width; the
table gives the held-out score (IWAE), and the inference gaps of the
encoder on held-out rows (:func:`~skvae.diagnostics.amortization_gap`).

Prints markdown tables.
"""

import argparse
import copy
import time
import warnings

import numpy as np
import torch
from _common import MACHINE
from scipy.linalg import orthogonal_procrustes
from scipy.stats import norm
from sklearn.decomposition import PCA, FastICA
from sklearn.exceptions import ConvergenceWarning

from skvae import VAETransformer
from skvae.datasets import make_latent_gaussian, make_mobius
from skvae.diagnostics import (
    amortization_gap,
    ima_contrast,
    mean_correlation_coefficient,
    self_consistency,
)

warnings.simplefilter("ignore", ConvergenceWarning)

AUTHORS_MCC = {1e-1: 0.15, 1e-3: 0.71, 1e-4: 0.96, 1e-5: 0.96}


def mcc_after_best_rotation(S, Z):
    """MCC once the codes are rotated onto the sources (an oracle).

    With a standard normal prior the ideal codes are the Gaussianised sources
    ``norm.ppf(S + 0.5)``; the prior is rotation invariant, so only the IMA
    contrast tells a rotation of them from the sources. Rotating the
    standardised codes onto the standardised Gaussianised sources (orthogonal
    Procrustes, which uses the truth) measures recovery up to rotation.
    """
    Z, G = _standardise(Z), _standardise(norm.ppf(S + 0.5))
    rotation, _ = orthogonal_procrustes(Z, G)
    return mean_correlation_coefficient(S, Z @ rotation).score


def _standardise(A):
    return (A - A.mean(0)) / A.std(0)


def rotation_symmetry(vae, X, S, n_rotations=20, seed=0):
    """How much rotating the latents changes the fit and the MCC.

    The prior N(0, I) is rotation invariant, so replacing the decoder ``f`` by
    ``f o R`` and the codes ``z`` by ``R^T z`` (``R`` a random rotation)
    leaves the prior term and the reconstructions unchanged; as the decoder
    variance goes to 0 the ELBO then changes only through the IMA contrast
    ``c_IMA(J_f(z) R)`` (Reizinger et al.). Returns the largest change of the
    mean contrast over the rotations, and the range of the MCC they give: a
    small change with a wide range means the model cannot tell the sources'
    rotation from the others.
    """
    module = copy.deepcopy(vae.module_).double()
    Z = vae.transform(X)
    with torch.no_grad():
        J = torch.func.vmap(
            torch.func.jacfwd(lambda z: module.decode(z.unsqueeze(0)).squeeze(0))
        )(torch.as_tensor(Z, dtype=torch.float64)).numpy()

    def mean_contrast(J):
        log_norms = np.log(np.linalg.norm(J, axis=1)).sum(-1)
        return float(np.mean(log_norms - 0.5 * np.linalg.slogdet(J.mT @ J)[1]))

    rng = np.random.default_rng(seed)
    base = mean_contrast(J)
    changes, mccs = [], []
    for _ in range(n_rotations):
        q, r = np.linalg.qr(rng.standard_normal((3, 3)))
        rotation = q * np.sign(np.diag(r))
        changes.append(abs(mean_contrast(J @ rotation) - base))
        mccs.append(mean_correlation_coefficient(S, Z @ rotation).score)
    return {
        "rotation_c_ima_change": max(changes),
        "rotation_mcc_min": min(mccs),
        "rotation_mcc_max": max(mccs),
    }


def linear_baselines(X_train, X_test, S_test, seed):
    """MCC of two linear maps of the data, as references for the VAE's.

    Whitened PCA leaves the rotation unresolved (compare its MCC after the
    best rotation with the VAE's); FastICA resolves it from the sources'
    non-Gaussianity, which a linear map can exploit when the mixing is close
    to affine.
    """
    pca = PCA(3, whiten=True).fit(X_train).transform(X_test)
    ica = FastICA(3, whiten="unit-variance", random_state=seed).fit(X_train)
    return {
        "pca_mcc": mean_correlation_coefficient(S_test, pca).score,
        "pca_rotated_mcc": mcc_after_best_rotation(S_test, pca),
        "ica_mcc": mean_correlation_coefficient(S_test, ica.transform(X_test)).score,
    }


def bench_mobius(seeds, n_train, n_test, decoder_variances, epochs, prior_shape):
    """Per decoder variance, a list of per-seed measurements, and per seed the
    linear baselines."""
    results = {variance: [] for variance in decoder_variances}
    baselines = []
    for seed in range(seeds):
        X, S = make_mobius(n_train + n_test, n_features=3, random_state=seed)
        X_train, X_test, S_test = X[:n_train], X[n_train:], S[n_train:]
        baselines.append(linear_baselines(X_train, X_test, S_test, seed))
        print(f"  seed {seed}, linear baselines: {baselines[-1]}")
        for variance in decoder_variances:
            vae = VAETransformer(
                n_components=3,
                encoder_layers=(30, 30),
                decoder_variance=variance,
                prior_shape=prior_shape,
                max_iter=epochs,
                batch_size=64,
                learning_rate_init=1e-3,
                n_iter_no_change=20,
                random_state=seed,
            )
            start = time.perf_counter()
            vae.fit(X_train)
            fit_time = time.perf_counter() - start
            consistency = self_consistency(vae, X_test, random_state=seed)
            Z_test = vae.transform(X_test)
            results[variance].append(
                {
                    "mcc": mean_correlation_coefficient(S_test, Z_test).score,
                    "rotated_mcc": mcc_after_best_rotation(S_test, Z_test),
                    "c_ima": ima_contrast(vae, X_test).global_contrast,
                    "x_error": consistency.reconstruction_error.mean()
                    / X_test.var(0).sum(),
                    "z_error": consistency.latent_error.mean() / 3,
                    "epochs": vae.n_iter_,
                    "time": fit_time,
                    **rotation_symmetry(vae, X_test, S_test, seed=seed),
                }
            )
            print(f"  seed {seed}, variance {variance:g}: {results[variance][-1]}")
    return results, baselines


def bench_encoder_size(seeds, n_train, n_test, widths, epochs, n_gap_rows):
    """Per (invertible, width), a list of per-seed measurements."""
    results = {}
    for invertible in (True, False):
        for seed in range(seeds):
            X, _ = make_latent_gaussian(
                n_train + n_test,
                n_components=2,
                n_features=10,
                invertible=invertible,
                noise=0.05,
                random_state=seed,
            )
            X_train, X_test = X[:n_train], X[n_train:]
            for width in widths:
                vae = VAETransformer(
                    n_components=2,
                    encoder_layers=(width, width),
                    decoder_layers=(64, 64),
                    max_iter=epochs,
                    n_iter_no_change=20,
                    n_importance_samples=500,
                    random_state=seed,
                )
                start = time.perf_counter()
                vae.fit(X_train)
                fit_time = time.perf_counter() - start
                gaps = amortization_gap(
                    vae,
                    X_test[:n_gap_rows],
                    n_importance_samples=2000,
                    random_state=seed,
                )
                row = {
                    "score": vae.score(X_test),
                    "elbo": gaps.elbo.mean(),
                    "amortization": gaps.amortization_gap.mean(),
                    "approximation": gaps.approximation_gap.mean(),
                    "epochs": vae.n_iter_,
                    "time": fit_time,
                }
                results.setdefault((invertible, width), []).append(row)
                print(f"  invertible={invertible}, seed {seed}, width {width}: {row}")
    return results


def _mean(rows, key):
    return float(np.mean([row[key] for row in rows]))


def print_mobius(results, baselines, seeds):
    print(
        "| decoder variance | MCC, mean (min-max) | authors' MCC | MCC after best "
        "rotation | mean c_IMA | rel. x error | rel. z error | epochs (median) | "
        "fit time, s (median) |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    for variance, rows in results.items():
        mcc = [row["mcc"] for row in rows]
        authors = AUTHORS_MCC.get(variance)
        print(
            f"| {variance:g} | {np.mean(mcc):.2f} ({min(mcc):.2f}-{max(mcc):.2f}) | "
            f"{'' if authors is None else authors} | "
            f"{_mean(rows, 'rotated_mcc'):.2f} | {_mean(rows, 'c_ima'):.3f} | "
            f"{_mean(rows, 'x_error'):.1e} | {_mean(rows, 'z_error'):.1e} | "
            f"{np.median([r['epochs'] for r in rows]):.0f} | "
            f"{np.median([r['time'] for r in rows]):.0f} |"
        )
    print(
        f"| linear: whitened PCA | {_mean(baselines, 'pca_mcc'):.2f} | | "
        f"{_mean(baselines, 'pca_rotated_mcc'):.2f} | | | | | |"
    )
    print(f"| linear: FastICA | {_mean(baselines, 'ica_mcc'):.2f} | | | | | | | |")
    print(f"\nMCC per seed (seeds 0 to {seeds - 1}):")
    for variance, rows in results.items():
        per_seed = ", ".join(f"{row['mcc']:.2f}" for row in rows)
        print(f"- {variance:g}: {per_seed}")
    print(
        "\nRotating the codes by 20 random rotations (decoder composed with the "
        "rotation): largest change of the mean c_IMA, and the MCC range, per seed:"
    )
    for variance, rows in results.items():
        per_seed = ", ".join(
            f"{row['rotation_c_ima_change']:.3f} nats, MCC "
            f"{row['rotation_mcc_min']:.2f}-{row['rotation_mcc_max']:.2f}"
            for row in rows
        )
        print(f"- {variance:g}: {per_seed}")


def print_encoder_size(results):
    print(
        "| G | encoder width | held-out score (sd over seeds) | ELBO[q] | "
        "amortization gap | approximation gap | epochs | fit time, s |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for (invertible, width), rows in results.items():
        print(
            f"| {'invertible' if invertible else 'folding'} | ({width}, {width}) | "
            f"{_mean(rows, 'score'):.2f} ({np.std([r['score'] for r in rows]):.2f}) | "
            f"{_mean(rows, 'elbo'):.2f} | "
            f"{_mean(rows, 'amortization'):.3f} | "
            f"{_mean(rows, 'approximation'):.3f} | "
            f"{np.median([r['epochs'] for r in rows]):.0f} | "
            f"{np.median([r['time'] for r in rows]):.0f} |"
        )


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("part", choices=["mobius", "encoder-size"])
    parser.add_argument("--seeds", type=int, default=None)
    parser.add_argument("--prior-shape", type=float, default=2.0)
    args = parser.parse_args()
    print(f"{time.strftime('%Y-%m-%d')}, {MACHINE}, torch {torch.__version__}\n")
    if args.part == "mobius":
        seeds = args.seeds or 5
        results, baselines = bench_mobius(
            seeds,
            n_train=10_000,
            n_test=2_000,
            decoder_variances=[1e-4, 1e-5],
            epochs=150,
            prior_shape=args.prior_shape,
        )
        print()
        print_mobius(results, baselines, seeds)
    else:
        results = bench_encoder_size(
            args.seeds or 3,
            n_train=4_000,
            n_test=1_000,
            widths=[2, 4, 8, 16, 32, 64, 128],
            epochs=300,
            n_gap_rows=100,
        )
        print()
        print_encoder_size(results)


if __name__ == "__main__":
    main()
