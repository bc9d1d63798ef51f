"""Pieces every benchmark shares: data splits, the plain torch loop, timing."""

import os
import platform
import time

import numpy as np
import torch
from scipy.special import log_ndtr, logsumexp, ndtr
from sklearn.datasets import load_digits, make_moons, make_s_curve, make_swiss_roll
from sklearn.model_selection import train_test_split

from skvae.datasets import load_digits_dequantized


def describe_machine():
    """The CPU model, cores, memory, torch's SIMD level and any GPU, in words.

    Every table names the CPU because ratios between estimators move with
    it: the INN's epoch against the VAE's on MNIST, 1.62 on one session's
    machine and 1.86 on the next session's (an AMD EPYC), with the same code.
    """
    model = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            for line in cpuinfo:
                if line.startswith("model name"):
                    model = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU"
    return (
        f"{model}, {os.cpu_count()} cores "
        f"({torch.backends.cpu.get_cpu_capability()}), {memory:.0f} GiB, {gpu}"
    )


MACHINE = describe_machine()


def dequantized_digits_split():
    """Digits as (counts + U[0, 1)) / 17, split 80/20 with random_state=0."""
    X = load_digits_dequantized(random_state=0).data
    return train_test_split(X, test_size=0.2, random_state=0)


def digits_split():
    """Digits / 16, split 80/20 with random_state=0 (reconstruction anchors)."""
    return train_test_split(load_digits().data / 16, test_size=0.2, random_state=0)


# scikit-learn's toy manifolds and the noise each is drawn with: a curve in
# 2-D and two surfaces in 3-D, thin against their size.
TOY_MANIFOLDS = {"two moons": 0.05, "S-curve": 0.05, "Swiss roll": 0.1}


def toy_manifold(name, n_samples, random_state):
    """Rows of one of scikit-learn's toy manifolds, and their exact log-density.

    ``make_moons`` places its noiseless points on a fixed grid, so its
    density is a mixture of one isotropic Gaussian per grid point: the
    blurred curve of the grid itself. The S-curve and the Swiss roll draw a
    curve parameter and a height uniformly: the height's Gaussian blur of a
    uniform has a closed form, and the curve parameter is integrated on a
    grid fine against the noise.
    """
    noise = TOY_MANIFOLDS[name]
    if name == "two moons":
        X = make_moons(n_samples, noise=noise, random_state=random_state)[0]
        grid = make_moons(n_samples, shuffle=False)[0]
        return X, _blurred_curve(X, grid, noise)
    if name == "S-curve":
        X = make_s_curve(n_samples, noise=noise, random_state=random_state)[0]
        return X, s_curve_log_density(X, noise)
    X = make_swiss_roll(n_samples, noise=noise, random_state=random_state)[0]
    return X, swiss_roll_log_density(X, noise)


def s_curve_log_density(X, noise):
    """Exact log-density of ``make_s_curve(noise=noise)`` at the rows of X."""
    t = _midpoints(-1.5 * np.pi, 1.5 * np.pi, 20_000)
    curve = np.stack([np.sin(t), np.sign(t) * (np.cos(t) - 1)], axis=1)
    return _blurred_curve(X[:, [0, 2]], curve, noise) + _blurred_uniform(
        X[:, 1], 0.0, 2.0, noise
    )


def swiss_roll_log_density(X, noise):
    """Exact log-density of ``make_swiss_roll(noise=noise)`` at the rows of X."""
    t = _midpoints(1.5 * np.pi, 4.5 * np.pi, 60_000)
    curve = np.stack([t * np.cos(t), t * np.sin(t)], axis=1)
    return _blurred_curve(X[:, [0, 2]], curve, noise) + _blurred_uniform(
        X[:, 1], 0.0, 21.0, noise
    )


def _midpoints(low, high, n):
    edges = np.linspace(low, high, n + 1)
    return 0.5 * (edges[1:] + edges[:-1])


def _blurred_curve(X, curve, noise):
    """log of the mean over the points of a curve of N(x; point, noise**2 I), 2-D."""
    log_p = np.empty(len(X))
    for start in range(0, len(X), 256):
        rows = X[start : start + 256]
        squared = ((rows[:, None, :] - curve[None]) ** 2).sum(-1)
        log_p[start : start + 256] = logsumexp(-0.5 * squared / noise**2, axis=1)
    return log_p - np.log(len(curve)) - np.log(2 * np.pi * noise**2)


def _blurred_uniform(y, low, high, noise):
    """log density of U[low, high] plus N(0, noise**2), in closed form."""
    upper, lower = (high - y) / noise, (low - y) / noise
    # Phi(upper) - Phi(lower) loses every digit where both are near 1: take
    # the difference of the upper tails there.
    mass = np.where(lower > 0, ndtr(-lower) - ndtr(-upper), ndtr(upper) - ndtr(lower))
    with np.errstate(divide="ignore"):
        log_mass = np.where(mass > 0, np.log(np.maximum(mass, 1e-300)), log_ndtr(upper))
    return log_mass - np.log(high - low)


# Each manifold's intrinsic dimension: the n_components a user would pick.
TOY_MANIFOLD_DIMENSION = {"two moons": 1, "S-curve": 2, "Swiss roll": 2}


def toy_manifold_split(name, seed, n_train=2000, n_test=2000):
    """Training rows, held-out rows and the held-out rows' exact log-density."""
    X, log_p = toy_manifold(name, n_train + n_test, seed)
    return X[:n_train], X[n_train:], log_p[n_train:]


def torch_loop(module, X, epochs, batch_size, lr, seed):
    """The hand-written loop a PyTorch user would write for the same model."""
    generator = torch.Generator().manual_seed(seed)
    optimizer = torch.optim.Adam(module.parameters(), lr=lr)
    X = torch.from_numpy(X)
    for _ in range(epochs):
        X_epoch = X[torch.randperm(len(X), generator=generator)]
        total = 0.0
        for start in range(0, len(X_epoch), batch_size):
            loss = module.loss(X_epoch[start : start + batch_size], generator).mean()
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            total += loss.item()
    return module


def paired_fit_ratio(make_estimator, X, epochs, batch_size, lr, repeats):
    """Median time ratio of estimator.fit to the plain loop, run back to back.

    Returns the median ratio, the median (estimator, loop) seconds and every
    ratio.
    """
    ratios, pairs = [], []
    for repeat in range(repeats):
        est = make_estimator(repeat)
        start = time.perf_counter()
        est.fit(X)
        t_est = time.perf_counter() - start
        module = est._build_module(X.shape[1], torch.Generator().manual_seed(repeat))
        start = time.perf_counter()
        torch_loop(module, X, epochs, batch_size, lr, repeat)
        t_loop = time.perf_counter() - start
        ratios.append(t_est / t_loop)
        pairs.append((t_est, t_loop))
    return float(np.median(ratios)), np.median(pairs, axis=0), ratios


def reconstruction_mse(model, X):
    return float(np.mean((model.inverse_transform(model.transform(X)) - X) ** 2))
