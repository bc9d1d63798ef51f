"""Memory, chunking and distributed search.

Run by hand on a quiet machine (tests never time anything)::

    python benchmarks/bench_scale.py memory [--rows 1000000]
    python benchmarks/bench_scale.py transform --estimator inn [--rows 8000000]
    python benchmarks/bench_scale.py chunking [--rows 20000]
    python benchmarks/bench_scale.py search [--epochs 100]

``memory``: peak resident memory of ``score_samples`` with 100 importance
samples on ``--rows`` x 64 float32 rows, above the memory held before the
call (the input and the model). Linux only: the peak is read from
``/proc/self/status`` after resetting it through ``/proc/self/clear_refs``.

``transform``: peak resident memory of ``transform`` on ``--rows`` x 32
float32 rows, for one estimator per run (a fresh process, so that no
earlier call has shaped the heap), measured as for ``memory``.

``chunking``: time and peak memory of ``score_samples`` in skvae's bounded
chunks against one pass over all rows at once, on data that fits.

``search``: wall time of the same ``GridSearchCV`` with ``n_jobs=1``,
``n_jobs=2`` (joblib's processes) and on a local Dask cluster of 2 worker
processes through ``joblib.parallel_backend("dask")``.
"""

import argparse
import time
import warnings
from pathlib import Path

import numpy as np
import torch
from _common import MACHINE, digits_split
from joblib import parallel_backend
from sklearn.exceptions import ConvergenceWarning
from sklearn.model_selection import GridSearchCV

from skvae import INNAutoencoder, IsometricVAE, VAETransformer

warnings.simplefilter("ignore", ConvergenceWarning)

N_FEATURES = 64
MODEL = dict(n_components=8, encoder_layers=(64, 64), n_importance_samples=100)
TRANSFORMERS = {
    "vae": lambda: VAETransformer(8, encoder_layers=(64, 64)),
    "inn": lambda: INNAutoencoder(8, subnet_layers=(64, 64)),
    "isometric": lambda: IsometricVAE(8, encoder_layers=(64, 64)),
}
TRANSFORM_FEATURES = 32


def _memory_kib(field):
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status")


def _peak_above_current(call):
    """Run ``call``; return its result, seconds, and peak RSS above the RSS
    before it, in MiB."""
    Path("/proc/self/clear_refs").write_text("5")  # reset the peak (VmHWM)
    before = _memory_kib("VmRSS")
    start = time.perf_counter()
    result = call()
    seconds = time.perf_counter() - start
    return result, seconds, (_memory_kib("VmHWM") - before) / 1024


def _fitted_model():
    rng = np.random.default_rng(0)
    return VAETransformer(**MODEL, max_iter=2, random_state=0).fit(
        rng.uniform(size=(2000, N_FEATURES)).astype(np.float32)
    )


def bench_memory(n_rows):
    est = _fitted_model()
    X = np.random.default_rng(1).uniform(size=(n_rows, N_FEATURES))
    X = X.astype(np.float32)
    log_p, seconds, peak = _peak_above_current(lambda: est.score_samples(X))
    assert np.isfinite(log_p).all()
    return X.nbytes / 2**20, peak, seconds


def bench_transform(name, n_rows):
    rng = np.random.default_rng(0)
    est = TRANSFORMERS[name]().set_params(max_iter=2, random_state=0)
    est.fit(rng.normal(size=(2000, TRANSFORM_FEATURES)).astype(np.float32))
    X = rng.normal(size=(n_rows, TRANSFORM_FEATURES)).astype(np.float32)
    Z, seconds, peak = _peak_above_current(lambda: est.transform(X))
    return X.nbytes / 2**20, Z.nbytes / 2**20, peak, seconds


def bench_chunking(n_rows, repeats):
    est = _fitted_model()
    X = np.random.default_rng(1).uniform(size=(n_rows, N_FEATURES))
    X = X.astype(np.float32)
    rows = []
    for name, budget in (("chunked (default)", None), ("one pass", 2**40)):
        if budget is not None:
            est._inference_budget = budget
        runs = [
            _peak_above_current(lambda: est.score_samples(X)) for _ in range(repeats)
        ]
        rows.append((name, np.median([r[1] for r in runs]), max(r[2] for r in runs)))
    return rows


def bench_search(repeats, epochs):
    import distributed

    X = digits_split()[0]
    search = GridSearchCV(
        VAETransformer(2, max_iter=epochs, n_iter_no_change=epochs, random_state=0),
        {"encoder_layers": [(32,), (64,), (128,)], "beta": [0.5, 1.0]},
        cv=3,
    )

    def timed(n_jobs, backend=None):
        times = []
        for _ in range(repeats):
            search.set_params(n_jobs=n_jobs)
            start = time.perf_counter()
            if backend is None:
                search.fit(X)
            else:
                with parallel_backend(backend):
                    search.fit(X)
            times.append(time.perf_counter() - start)
        return np.median(times), search.best_params_

    results = [("n_jobs=1", *timed(1)), ("n_jobs=2 (loky)", *timed(2))]
    with (
        distributed.LocalCluster(
            n_workers=2,
            threads_per_worker=1,
            host="127.0.0.1",
            dashboard_address=None,
        ) as cluster,
        distributed.Client(cluster),
    ):
        results.append(("Dask, 2 local workers", *timed(-1, "dask")))
    return results


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("part", choices=["memory", "transform", "chunking", "search"])
    parser.add_argument("--rows", type=int)
    parser.add_argument("--estimator", choices=sorted(TRANSFORMERS), default="inn")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--epochs", type=int, default=100)
    args = parser.parse_args()
    print(f"{time.strftime('%Y-%m-%d')}, {MACHINE}, torch {torch.__version__}\n")
    if args.part == "memory":
        rows = args.rows or 1_000_000
        input_mib, peak, seconds = bench_memory(rows)
        print("| rows x features | input (MiB) | peak above input (MiB) | time (s) |")
        print("|---|---|---|---|")
        print(
            f"| {rows} x {N_FEATURES} | {input_mib:.0f} | {peak:.0f} | {seconds:.0f} |"
        )
    elif args.part == "transform":
        rows = args.rows or 8_000_000
        input_mib, output_mib, peak, seconds = bench_transform(args.estimator, rows)
        print(
            "| estimator | rows x features | input (MiB) | output (MiB) "
            "| peak above input (MiB) | time (s) |"
        )
        print("|---|---|---|---|---|---|")
        print(
            f"| {args.estimator} | {rows} x {TRANSFORM_FEATURES} | {input_mib:.0f} "
            f"| {output_mib:.0f} | {peak:.0f} | {seconds:.0f} |"
        )
    elif args.part == "chunking":
        rows = args.rows or 20_000
        print(f"| score_samples, {rows} rows | time (s) | peak above input (MiB) |")
        print("|---|---|---|")
        for name, seconds, peak in bench_chunking(rows, args.repeats):
            print(f"| {name} | {seconds:.2f} | {peak:.0f} |")
    else:
        print("| GridSearchCV, 6 candidates x 3 folds | wall time (s) | best |")
        print("|---|---|---|")
        for name, seconds, best in bench_search(args.repeats, args.epochs):
            print(f"| {name} | {seconds:.1f} | {best} |")


if __name__ == "__main__":
    main()
