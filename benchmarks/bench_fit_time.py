"""Fit time at defaults on the digits, against another checkout of skvae.

Run by hand, from the repository root, on a quiet machine::

    git worktree add --detach ../skvae-before <commit>
    python benchmarks/bench_fit_time.py ../skvae-before [--repeats 5]

Each fit runs in a fresh process on one thread, alternating between this
checkout and the other one (paired runs), with every estimator at its
defaults except ``n_components`` and ``random_state``, and is timed after
the process has created a first torch optimizer (which imports torch's
compiler, about 2 s once per process). Prints the median
times, the epochs run and the median of the per-pair ratios.
"""

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
from _common import MACHINE

HERE = Path(__file__).resolve().parents[1]

FIT = """
import json, time, warnings
import numpy as np
from sklearn.datasets import load_digits
import torch
import skvae
warnings.simplefilter("ignore")
# torch imports its compiler once per process, with the first optimizer
# (about 2 s): a cost of the process, not of the fit.
torch.optim.Adam([torch.zeros(1, requires_grad=True)])
if not skvae.__file__.startswith({checkout!r}):
    raise SystemExit(f"imported {{skvae.__file__}}, not the checkout")
X = load_digits().data
est = getattr(skvae, {name!r})({k}, random_state={seed})
start = time.perf_counter()
est.fit(X)
print(json.dumps([time.perf_counter() - start, est.n_iter_]))
"""


def fit_once(checkout, name, k, seed):
    env = {**os.environ, "PYTHONPATH": str(checkout), "OMP_NUM_THREADS": "1"}
    code = FIT.format(name=name, k=k, seed=seed, checkout=str(checkout))
    # ``python -c`` puts the working directory ahead of PYTHONPATH: run from
    # the checkout, or a run from the repository root times this checkout
    # twice.
    out = subprocess.run(
        [sys.executable, "-c", code],
        cwd=checkout,
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("baseline", type=Path)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument(
        "--estimators",
        nargs="+",
        default=["VAETransformer", "IsometricVAE", "INNAutoencoder"],
    )
    args = parser.parse_args()
    print(
        f"{time.strftime('%Y-%m-%d')}, {MACHINE}; digits (1797 x 64), defaults, "
        f"one thread, {args.repeats} pairs; baseline {args.baseline}\n"
    )
    print("| estimator | k | now (s) | epochs | before (s) | epochs | ratio |")
    print("|---|---|---|---|---|---|---|")
    for name in args.estimators:
        for k in (2, 10):
            now, before = [], []
            for seed in range(args.repeats):
                now.append(fit_once(HERE, name, k, seed))
                before.append(fit_once(args.baseline.resolve(), name, k, seed))
            now, before = np.array(now), np.array(before)
            ratio = np.median(now[:, 0] / before[:, 0])
            print(
                f"| {name} | {k} | {np.median(now[:, 0]):.1f} "
                f"| {np.median(now[:, 1]):.0f} | {np.median(before[:, 0]):.1f} "
                f"| {np.median(before[:, 1]):.0f} | {ratio:.2f} |"
            )


if __name__ == "__main__":
    main()
