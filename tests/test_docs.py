"""The API reference lists every public name (the docs build checks the rest)."""

import importlib
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PUBLIC_MODULES = [
    "skvae",
    "skvae.datasets",
    "skvae.nn",
    "skvae.diagnostics",
    "skvae.inference",
]


def _documented_names():
    """Names listed under an autosummary, with the module they are listed in."""
    names = set()
    module = None
    for line in (ROOT / "docs" / "api.rst").read_text().splitlines():
        current = re.match(r"\.\. currentmodule:: (\S+)", line)
        if current:
            module = current.group(1)
        elif re.match(r"   [A-Za-z_]\w*$", line):
            names.add(f"{module}.{line.strip()}")
    return names


@pytest.mark.parametrize("module_name", PUBLIC_MODULES)
def test_every_public_name_is_in_the_api_reference(module_name):
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError:
        pytest.skip(f"{module_name} does not exist yet")
    public = {f"{module_name}.{name}" for name in module.__all__} - {
        "skvae.__version__"
    }
    missing = sorted(public - _documented_names())
    assert not missing, f"add to docs/api.rst: {missing}"
