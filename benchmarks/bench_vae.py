"""Speed and quality of VAETransformer against the tools it replaces.

Run by hand on a quiet machine (tests never time anything)::

    python benchmarks/bench_vae.py speed      # fit / inference overhead
    python benchmarks/bench_vae.py quality [--seeds 3]  # log-likelihood, reconstruction

Speed figures are medians of paired runs (estimator and plain torch loop
back to back), reported as ratios because absolute times drift on shared
machines.
"""

import argparse
import time
import warnings
from functools import partial

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
from sklearn.mixture import GaussianMixture

from skvae import VAETransformer
from skvae.inference import FittedModule

warnings.simplefilter("ignore", ConvergenceWarning)

SETTINGS = dict(
    n_components=10,
    encoder_layers=(256, 256),
    activation="silu",
    batch_size=128,
    learning_rate_init=1e-3,
)


def bench_fit(repeats, epochs):
    X = dequantized_digits_split()[0].astype(np.float32)
    return paired_fit_ratio(
        lambda seed: VAETransformer(
            **SETTINGS, max_iter=epochs, n_iter_no_change=epochs, random_state=seed
        ),
        X,
        epochs,
        SETTINGS["batch_size"],
        SETTINGS["learning_rate_init"],
        repeats,
    )


def bench_inference(repeats, n_rows, n_importance_samples):
    X_small = dequantized_digits_split()[0]
    est = VAETransformer(
        **SETTINGS,
        max_iter=2,
        n_importance_samples=n_importance_samples,
        random_state=0,
    ).fit(X_small)
    rng = np.random.default_rng(0)
    rows = []
    for dtype in (np.float32, np.float64):
        X = rng.uniform(size=(n_rows, X_small.shape[1])).astype(dtype)
        fitted = FittedModule(est, dtype)
        module = fitted.module
        x = torch.from_numpy(X)
        # The chunks score_samples uses: sized by the measured cost.
        chunk = fitted.rows_per_chunk(
            fitted.floats_per_row(
                lambda m, rows: m.log_prob(
                    rows, _generator(0), n_samples=n_importance_samples
                ),
                X,
            )
        )

        bare_encode = partial(_bare_encode, module, x)
        bare_score = partial(
            _bare_score, module, x, chunk, n_importance_samples, _generator
        )

        for name, method, bare in (
            ("transform", est.transform, bare_encode),
            ("score_samples", est.score_samples, bare_score),
        ):
            ratios, pairs = [], []
            for _ in range(repeats):
                start = time.perf_counter()
                method(X)
                t_est = time.perf_counter() - start
                start = time.perf_counter()
                bare()
                t_bare = time.perf_counter() - start
                ratios.append(t_est / t_bare)
                pairs.append((t_est, t_bare))
            rows.append(
                (
                    name,
                    np.dtype(dtype).name,
                    np.median(ratios),
                    *np.median(pairs, axis=0),
                )
            )
    return rows


def _generator(seed):
    return torch.Generator().manual_seed(seed)


def _bare_encode(module, x):
    with torch.no_grad():
        return module.encode(x).numpy()


def _bare_score(module, x, chunk, n_importance_samples, make_generator):
    with torch.no_grad():
        return torch.cat(
            [
                module.log_prob(
                    x[s : s + chunk], make_generator(0), n_samples=n_importance_samples
                )
                for s in range(0, len(x), chunk)
            ]
        ).numpy()


def bench_loglik(epochs, n_importance_samples, seeds):
    X_train, X_test = dequantized_digits_split()
    rows = []
    for decoder_variance in ("learned", "heteroscedastic"):
        scores, fit_times = [], []
        for seed in range(seeds):
            start = time.perf_counter()
            vae = VAETransformer(
                **SETTINGS,
                decoder_variance=decoder_variance,
                max_iter=epochs,
                n_iter_no_change=epochs,
                n_importance_samples=n_importance_samples,
                random_state=seed,
            ).fit(X_train)
            fit_times.append(time.perf_counter() - start)
            scores.append(vae.score(X_test))
        rows.append(
            (
                f"VAETransformer, decoder_variance={decoder_variance!r}, "
                f"IWAE-{n_importance_samples}, mean of seeds 0..{seeds - 1} "
                f"({', '.join(f'{v:.1f}' for v in scores)}; "
                f"fit {np.median(fit_times):.0f} s)",
                np.mean(scores),
            )
        )
    pca = PCA().fit(X_train)
    gmm_scores = {
        k: GaussianMixture(k, random_state=0).fit(X_train).score(X_test)
        for k in (1, 2, 5, 10, 20, 40)
    }
    best_k = max(gmm_scores, key=gmm_scores.get)
    return [
        *rows,
        ("PCA (all components)", pca.score(X_test)),
        (f"GaussianMixture (best of 1..40: {best_k})", gmm_scores[best_k]),
    ]


def bench_reconstruction(epochs):
    X_train, X_test = digits_split()
    rows = []
    for k in (2, 5, 10, 20):
        pca = PCA(k).fit(X_train)
        vae = VAETransformer(
            **{**SETTINGS, "n_components": k},
            decoder_variance=1e-3,
            max_iter=epochs,
            n_iter_no_change=epochs,
            random_state=0,
        ).fit(X_train)
        rows.append(
            (k, reconstruction_mse(vae, X_test), reconstruction_mse(pca, X_test))
        )
    return rows


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("part", choices=["speed", "quality"])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--epochs", type=int, default=300)
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--rows", type=int, default=100_000)
    args = parser.parse_args()
    print(f"{time.strftime('%Y-%m-%d')}, {MACHINE}, torch {torch.__version__}\n")
    if args.part == "speed":
        ratio, (t_est, t_loop), ratios = bench_fit(args.repeats, epochs=50)
        print("| measurement | skvae (s) | plain torch (s) | median ratio |")
        print("|---|---|---|---|")
        print(
            f"| fit, digits, 50 epochs, batch 128 ({args.repeats} pairs; ratios "
            f"{', '.join(f'{r:.3f}' for r in ratios)}) | {t_est:.2f} | "
            f"{t_loop:.2f} | {ratio:.3f} |"
        )
        for name, dtype, r, t_est, t_bare in bench_inference(
            args.repeats, args.rows, 100
        ):
            print(
                f"| {name}, {args.rows} rows, {dtype} | {t_est:.2f} | "
                f"{t_bare:.2f} | {r:.3f} |"
            )
    else:
        print("| model | held-out log-likelihood (nats) |")
        print("|---|---|")
        for name, value in bench_loglik(args.epochs, 500, args.seeds):
            print(f"| {name} | {value:.1f} |")
        print("\n| n_components | VAETransformer MSE | PCA MSE |")
        print("|---|---|---|")
        for k, mse_vae, mse_pca in bench_reconstruction(args.epochs):
            print(f"| {k} | {mse_vae:.4f} | {mse_pca:.4f} |")


if __name__ == "__main__":
    main()
