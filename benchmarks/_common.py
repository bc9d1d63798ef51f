"""Pieces every benchmark shares: data splits, the plain torch loop, timing."""

import os
import platform
import time

import numpy as np
import torch
from sklearn.datasets import load_digits
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
