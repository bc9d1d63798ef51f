"""IsometricVAE's one-pass density against the IWAE estimate, on known densities,
and what its defaults give.

Run by hand on a quiet machine (tests never time anything)::

    python benchmarks/bench_isometric.py estimates [--seeds 3] [--repeats 5]
    python benchmarks/bench_isometric.py defaults [--seeds 3] [--noise per_feature]

``estimates``: for each data set, whose log-density is known exactly, one
IsometricVAE per seed is fitted (default training); its three estimates of
log p(x) on 10,000 held-out rows are then compared with the truth by
Spearman correlation and timed (median of ``--repeats`` runs of each): the
isometric estimate (one encoder and one decoder pass), the IWAE estimate
with 100 importance samples, and the prior density of the code
log N(mu(x); 0, I) alone.

``defaults``: with the default layers and training, the importances on
linear data against PCA's eigenvalues; and on the curved 2-D density in 6-D,
``beta`` chosen by ``GridSearchCV`` on ``score``, then the Spearman
correlation and the mean error of the held-out log-density against the
truth; ``--noise`` sets the one parameter that is not left at its default
(the default noise model unless given). Prints markdown tables.
"""

import argparse
import time
import warnings

import numpy as np
import torch
from _common import MACHINE
from scipy.stats import norm, spearmanr
from sklearn.decomposition import PCA
from sklearn.exceptions import ConvergenceWarning
from sklearn.model_selection import GridSearchCV

from skvae import IsometricVAE
from skvae.datasets import make_known_density

warnings.simplefilter("ignore", ConvergenceWarning)

N_TRAIN, N_TEST = 5000, 10_000


def linear_gaussian(n_samples, seed):
    """8-D Gaussian, covariance eigenvalues (4, 1, 0.25) + 0.05 noise."""
    rng = np.random.default_rng(seed)
    axes, _ = np.linalg.qr(rng.normal(size=(8, 8)))
    variances = np.full(8, 0.05)
    variances[:3] += [4.0, 1.0, 0.25]
    X = (rng.normal(size=(n_samples, 8)) * np.sqrt(variances)) @ axes.T
    log_p = norm.logpdf(X @ axes, scale=np.sqrt(variances)).sum(1)
    return X, log_p


def curved_known_density(n_samples, n_latent, n_features, n_centers, seed):
    """``make_known_density`` in ``n_latent`` dimensions on a curved surface.

    Rows ``(y, sin(F y + c) + 0.05 e)``, rotated: the exact
    log-density is ``log p_y(y) + log N(rest; sin(F y + c), 0.05^2 I)``.
    """
    Y, log_p_y = make_known_density(
        n_samples, n_latent, n_centers=n_centers, random_state=seed
    )
    rng = np.random.default_rng(seed)
    n_rest = n_features - n_latent
    frequencies = 0.5 * rng.normal(size=(n_rest, n_latent))
    phases = rng.uniform(0, 2 * np.pi, n_rest)
    height = np.sin(Y @ frequencies.T + phases)
    rest = height + 0.05 * rng.normal(size=height.shape)
    rotation, _ = np.linalg.qr(rng.normal(size=(n_features, n_features)))
    log_p = log_p_y + norm.logpdf(rest - height, scale=0.05).sum(1)
    X = np.c_[Y, rest] @ rotation.T
    return X, log_p


CASES = [
    (
        "linear Gaussian, rank 3 + noise, 8-D",
        linear_gaussian,
        dict(
            n_components=3,
            beta=0.1,
            encoder_layers=(),
            decoder_layers=(),
        ),
    ),
    (
        "skewed 2-D density on a curved surface in 8-D",
        lambda n, seed: curved_known_density(n, 2, 8, 1, seed),
        dict(
            n_components=2,
            beta=0.005,
            encoder_layers=(64, 64),
        ),
    ),
    (
        "3-D mixture of 3 on a curved surface in 16-D",
        lambda n, seed: curved_known_density(n, 3, 16, 3, seed),
        dict(
            n_components=3,
            beta=0.005,
            encoder_layers=(128, 128),
        ),
    ),
]


def median_time(function, repeats):
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        result = function()
        times.append(time.perf_counter() - start)
    return result, float(np.median(times))


def measure(make_data, params, seed, repeats):
    X, log_p = make_data(N_TRAIN + N_TEST, seed)
    X_train, X_test, true = X[:N_TRAIN], X[N_TRAIN:], log_p[N_TRAIN:]
    vae = IsometricVAE(**params, random_state=seed).fit(X_train)

    def score(density_estimate):
        # The estimate is read at call time: one fitted model serves both.
        vae.set_params(density_estimate=density_estimate, n_importance_samples=100)
        return vae.score_samples(X_test)

    estimates = {
        "isometric": lambda: score("isometric"),
        "IWAE-100": lambda: score("iwae"),
        "log p(mu) alone": lambda: norm.logpdf(vae.transform(X_test)).sum(1),
    }
    out = {}
    for name, estimate in estimates.items():
        values, seconds = median_time(estimate, repeats)
        out[name] = (spearmanr(values, true)[0], seconds * 10_000 / N_TEST)
    return out


def importances_on_linear_data(seed, **params):
    """Default IsometricVAE(3) on the 8-D linear Gaussian: importances / PCA's
    eigenvalues, for each of the three latents."""
    X, _ = linear_gaussian(N_TRAIN, seed)
    vae = IsometricVAE(3, random_state=seed, **params).fit(X)
    eigenvalues = PCA(3).fit(X).explained_variance_
    return vae.explained_variance_ / eigenvalues, vae.beta_


BETAS = np.logspace(-3, -1, 5)


def searched_beta_on_curved_density(seed, **params):
    """beta by 3-fold GridSearchCV on score, default IsometricVAE(2) otherwise."""
    X, log_p = curved_known_density(N_TRAIN + N_TEST, 2, 6, 1, seed)
    X_train, X_test, true = X[:N_TRAIN], X[N_TRAIN:], log_p[N_TRAIN:]
    search = GridSearchCV(
        IsometricVAE(2, random_state=seed, **params), {"beta": BETAS}, cv=3
    ).fit(X_train)
    estimate = search.best_estimator_.score_samples(X_test)
    return (
        search.best_params_["beta"],
        spearmanr(estimate, true)[0],
        float(np.mean(estimate) - np.mean(true)),
    )


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("part", choices=["estimates", "defaults"])
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--noise", choices=["isotropic", "per_feature"])
    args = parser.parse_args()
    torch.set_num_threads(1)
    if args.part == "defaults":
        params = {} if args.noise is None else {"noise": args.noise}
        print(
            f"{time.strftime('%Y-%m-%d')}, {MACHINE}, torch {torch.__version__}, "
            f"one thread; {N_TRAIN} training rows; defaults (encoder 256-256)"
            f"{''.join(f', {k}={v!r}' for k, v in params.items())}\n"
        )
        print("| seed | beta_ (auto) | importance / PCA eigenvalue, latents 1-3 |")
        print("|---|---|---|")
        for seed in range(args.seeds):
            ratios, beta = importances_on_linear_data(seed, **params)
            print(f"| {seed} | {beta:.4f} | {', '.join(f'{r:.3f}' for r in ratios)} |")
        print(
            f"\nCurved 2-D density in 6-D, beta by 3-fold GridSearchCV over "
            f"{', '.join(f'{b:g}' for b in BETAS)}; {N_TEST} held-out rows\n"
        )
        print("| seed | beta | Spearman vs true log p | mean estimate - mean truth |")
        print("|---|---|---|---|")
        for seed in range(args.seeds):
            beta, rho, error = searched_beta_on_curved_density(seed, **params)
            print(f"| {seed} | {beta:g} | {rho:.3f} | {error:+.2f} |")
        return
    print(
        f"{time.strftime('%Y-%m-%d')}, {MACHINE}, torch {torch.__version__}, "
        f"one thread; {N_TRAIN} training rows, {N_TEST} held-out rows; Spearman "
        f"correlation with the true log-density (median over {args.seeds} seeds, "
        "min in brackets); time to score 10k rows (median)\n"
    )
    print(
        "| data | estimate | Spearman vs true log p | time per 10k rows (ms) "
        "| time / isometric |"
    )
    print("|---|---|---|---|---|")
    for title, make_data, params in CASES:
        runs = [measure(make_data, params, s, args.repeats) for s in range(args.seeds)]
        base = np.median([run["isometric"][1] for run in runs])
        for name in runs[0]:
            rhos = [run[name][0] for run in runs]
            seconds = np.median([run[name][1] for run in runs])
            print(
                f"| {title} | {name} | {np.median(rhos):.3f} ({min(rhos):.3f}) "
                f"| {1000 * seconds:.1f} | {seconds / base:.1f} |"
            )


if __name__ == "__main__":
    main()
