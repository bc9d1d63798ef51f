"""What a hostile model file costs ``skvae.load``: time and peak memory.

Run by hand on a quiet machine (tests never time anything), Linux only::

    python benchmarks/bench_load_hardening.py files [--skvae PATH]
    python benchmarks/bench_load_hardening.py score [--skvae PATH]
    python benchmarks/bench_load_hardening.py fuzz [--examples 1000]

``files``: the small files of issue 13, item 1: a saved small model whose
parameters or attributes were edited to describe a huge network, with the
checksum recomputed (it has no key). Each is loaded in a fresh process,
after one load of the unedited file; the table gives the seconds of the
second ``load`` and its peak resident memory above the memory before it
(``/proc/self/clear_refs`` resets the peak). Every child runs under an
8 GiB address-space limit, so that an old skvae asking for 16 to 64 GB is
refused an allocation instead of exhausting the machine, and is killed after
``--timeout`` seconds. ``--skvae PATH`` imports skvae from ``PATH`` instead
(a checkout of an older commit, for the "before" column).

``score``: the same two figures for ``score_samples`` on 10 rows of a
loaded ``VAETransformer`` (encoder 64, 4 features) whose file asks for the
most importance samples ``fit`` accepts, 10**6 (the same child, limit and
timeout).

``fuzz``: the same two figures for every file of the mutation fuzz of
``tests/test_persistence.py`` (header, metadata JSON, tensor shapes, dtypes
and values, mostly with the checksum recomputed), run for ``--examples``
examples in one process: the slowest load and the largest peak.
"""

import argparse
import hashlib
import importlib.util
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

from _common import MACHINE

LIMIT_BYTES = 8 * 2**30
CASES = [
    ("VAETransformer", "params", "encoder_layers", [5 * 10**7]),
    ("VAETransformer", "params", "encoder_layers", [10**9]),
    ("VAETransformer", "params", "n_components", 10**9),
    ("VAETransformer", "attributes", "n_features_in_", 10**9),
    ("VAETransformer", "params", "encoder_layers", [8] * 20000),
    ("VAETransformer", "params", "n_importance_samples", 10**12),
    ("INNAutoencoder", "params", "n_blocks", 20000),
    ("INNAutoencoder", "attributes", "n_features_in_", 10**5),
]
SCORE_CASES = [("VAETransformer", "params", "n_importance_samples", 10**6)]
SMALL = {
    "VAETransformer": dict(encoder_layers=(8,), decoder_variance="heteroscedastic"),
    "INNAutoencoder": dict(n_blocks=2, subnet_layers=(8,)),
}


def _memory_kib(field):
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status")


def _measure(call):
    """Seconds and peak RSS above the RSS before, in MiB, of ``call()``, its
    result, and what it raised (None if nothing)."""
    Path("/proc/self/clear_refs").write_text("5")  # reset the peak (VmHWM)
    before = _memory_kib("VmRSS")
    start = time.perf_counter()
    result = error = None
    try:
        result = call()
    except Exception as exc:
        error = exc
    seconds = time.perf_counter() - start
    return seconds, (_memory_kib("VmHWM") - before) / 1024, result, error


def _reseal(path, entry, key, value):
    """Set ``key`` of the file's params or attributes JSON and recompute the
    checksum, written out here from the format's definition."""
    raw = path.read_bytes()
    n_header = int.from_bytes(raw[:8], "little")
    header = json.loads(raw[8 : 8 + n_header])
    data = raw[8 + n_header :]
    metadata = header["__metadata__"]
    content = json.loads(metadata[entry])
    content[key] = value
    metadata[entry] = json.dumps(content)
    digest = hashlib.sha256()
    for name in sorted(metadata):
        if name != "checksum":
            digest.update(f"{name}={metadata[name]}\n".encode())
    names = {"F32": "float32", "F64": "float64", "I64": "int64", "BOOL": "bool"}
    for name in sorted(k for k in header if k != "__metadata__"):
        info = header[name]
        digest.update(
            f"{name}:torch.{names[info['dtype']]}:{tuple(info['shape'])}\n".encode()
        )
        digest.update(data[slice(*info["data_offsets"])])
    metadata["checksum"] = digest.hexdigest()
    text = json.dumps(header).encode()
    path.write_bytes(len(text).to_bytes(8, "little") + text + data)


def child(baseline, path, score):
    """Load the unedited file, then the edited one (and, with ``score``,
    score 10 rows with it); print the figures of the last step."""
    import numpy as np

    import skvae

    warnings.simplefilter("ignore")
    skvae.load(baseline)
    seconds, peak, estimator, error = _measure(lambda: skvae.load(path))
    if score and error is None:
        X = np.random.default_rng(1).normal(size=(10, 4))
        seconds, peak, _, error = _measure(lambda: estimator.score_samples(X))
    outcome = "done" if error is None else type(error).__name__
    print(json.dumps({"seconds": seconds, "peak": peak, "outcome": outcome}))


def files(skvae_path, timeout, score=False):
    import numpy as np

    import skvae

    folder = Path(tempfile.mkdtemp())
    X = np.random.default_rng(0).normal(size=(60, 4))
    warnings.simplefilter("ignore")
    small = {"VAETransformer": dict(encoder_layers=(64,))} if score else SMALL
    cases = SCORE_CASES if score else CASES
    for name, params in small.items():
        est = getattr(skvae, name)(2, max_iter=3, random_state=0, **params)
        skvae.save(est.fit(X), folder / f"{name}.safetensors")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    if skvae_path:
        env["PYTHONPATH"] = skvae_path

    def limit():
        resource.setrlimit(resource.RLIMIT_AS, (LIMIT_BYTES, LIMIT_BYTES))

    print(f"skvae from {skvae_path or Path(skvae.__file__).parent.parent}")
    print(f"Measured {time.strftime('%Y-%m-%d')} on {MACHINE}")
    step = "score_samples" if score else "load"
    print(f"| file | bytes | {step} (s) | peak above baseline (MiB) | outcome |")
    print("|---|---|---|---|---|")
    for name, entry, key, value in cases:
        baseline = folder / f"{name}.safetensors"
        path = folder / "edited.safetensors"
        path.write_bytes(baseline.read_bytes())
        _reseal(path, entry, key, value)
        if isinstance(value, list) and len(value) > 3:
            value = f"[{value[0]}] * {len(value)}"
        label = f"{name} {key}={value}"
        try:
            run = subprocess.run(
                [sys.executable, __file__, "child", str(baseline), str(path)]
                + ["--score"] * score,
                capture_output=True,
                text=True,
                timeout=timeout,
                env=env,
                preexec_fn=limit,
            )
        except subprocess.TimeoutExpired:
            print(f"| {label} | {path.stat().st_size} | > {timeout} | - | killed |")
            continue
        if run.returncode != 0:
            print(f"| {label} | {path.stat().st_size} | - | - | rc {run.returncode} |")
            continue
        result = json.loads(run.stdout.splitlines()[-1])
        print(
            f"| {label} | {path.stat().st_size} | {result['seconds']:.3f} | "
            f"{result['peak']:.1f} | {result['outcome']} |"
        )


def fuzz(examples):
    import numpy as np
    from hypothesis import given, settings
    from hypothesis import strategies as st

    import skvae

    tests = Path(__file__).resolve().parent.parent / "tests"
    spec = importlib.util.spec_from_file_location(
        "test_persistence", tests / "test_persistence.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)

    folder = Path(tempfile.mkdtemp())
    X = np.random.default_rng(0).normal(size=(60, 4))
    saved = {}
    for cls in module.SMALL:
        skvae.save(module._fit(cls, X), folder / cls.__name__)
        saved[cls] = (folder / cls.__name__).read_bytes()
    # A model with networks given as code, loaded with a template.
    images = np.random.default_rng(1).random(size=(60, 16))
    est = module._fit(skvae.VAETransformer, images, **module._small_conv())
    skvae.save(est, folder / "networks")
    with_networks = {"networks": (folder / "networks").read_bytes()}
    load = skvae.load
    skvae.load(folder / "VAETransformer")
    figures = []

    def measured_load(path, **kwargs):
        seconds, peak, estimator, error = _measure(lambda: load(path, **kwargs))
        figures.append((seconds, peak, error is None))
        if error is not None:
            raise error
        return estimator

    skvae.load = measured_load
    test = module.test_a_mutated_file_loads_or_is_refused_with_a_value_error
    longer = settings(module.FUZZ, max_examples=examples)(
        given(data=st.data())(test.hypothesis.inner_test)
    )
    longer(
        saved=saved, with_networks=with_networks, X=X, images=images, tmp_path=folder
    )
    seconds, peaks = [f[0] for f in figures], [f[1] for f in figures]
    loaded = sum(f[2] for f in figures)
    print(f"Measured {time.strftime('%Y-%m-%d')} on {MACHINE}")
    print("| files | loaded | refused | slowest load (s) | largest peak (MiB) |")
    print("|---|---|---|---|---|")
    print(
        f"| {len(figures)} | {loaded} | {len(figures) - loaded} | "
        f"{max(seconds):.3f} | {max(peaks):.1f} |"
    )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    files_parser = commands.add_parser("files")
    files_parser.add_argument("--skvae", default=None)
    files_parser.add_argument("--timeout", type=int, default=120)
    score_parser = commands.add_parser("score")
    score_parser.add_argument("--skvae", default=None)
    score_parser.add_argument("--timeout", type=int, default=120)
    fuzz_parser = commands.add_parser("fuzz")
    fuzz_parser.add_argument("--examples", type=int, default=1000)
    child_parser = commands.add_parser("child")
    child_parser.add_argument("baseline")
    child_parser.add_argument("path")
    child_parser.add_argument("--score", action="store_true")
    args = parser.parse_args()
    if args.command in ("files", "score"):
        files(args.skvae, args.timeout, score=args.command == "score")
    elif args.command == "fuzz":
        fuzz(args.examples)
    else:
        child(args.baseline, args.path, args.score)
