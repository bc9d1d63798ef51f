"""Sphinx configuration of the skvae documentation.

Build with ``bash docs/build.sh`` (warnings are errors). The build must work
offline: no intersphinx inventories are fetched, and the architecture figure
is a checked-in SVG rather than a Graphviz call, so the build needs nothing
beyond the ``docs`` extra. The site works offline too: MathJax is served from
``_static`` rather than a CDN.
"""

import os
import re
import sys
from pathlib import Path

# The gallery runs the examples inside this process: no window may open.
os.environ.setdefault("MPLBACKEND", "Agg")

DOCS = Path(__file__).resolve().parent
ROOT = DOCS.parent
# Document the working tree even when the package is installed elsewhere.
sys.path.insert(0, str(ROOT))

import skvae  # noqa: E402

project = "skvae"
author = "The skvae developers"
copyright = "The skvae developers, BSD 3-Clause"
version = release = skvae.__version__

extensions = [
    "sphinx.ext.autodoc",
    "sphinx.ext.autosummary",
    "sphinx.ext.mathjax",
    # Copies its bundled MathJax into _static/mathjax and points mathjax_path
    # there, so equations typeset without a network connection.
    "sphinx-mathjax-offline",
    "sphinx.ext.viewcode",
    "numpydoc",
    "sphinx_gallery.gen_gallery",
    "myst_parser",
]

source_suffix = {".rst": "restructuredtext"}
root_doc = "index"
exclude_patterns = ["_build", "**.ipynb_checkpoints", "Thumbs.db", ".DS_Store"]
templates_path = ["_templates"]
# Markdown is only ever pulled in with ``include`` (the benchmark tables);
# heading anchors let its section titles be linked.
myst_heading_anchors = 2

# -- API reference ---------------------------------------------------------
autosummary_generate = True
autodoc_default_options = {"members": True, "inherited-members": True}
autodoc_typehints = "none"
# numpydoc writes the member tables; autosummary's own would repeat them.
numpydoc_show_class_members = False
numpydoc_class_members_toctree = False
numpydoc_xref_param_type = False
# Every documented public object must carry the numpydoc sections a user
# reads first, and an Examples section (which pytest runs as a doctest).
numpydoc_validation_checks = {"GL08", "SS01", "PR01", "RT01", "EX01"}
numpydoc_validation_exclude = {
    # Methods have their examples on the class page, as in scikit-learn.
    r"\.[A-Z]\w*\.\w+$",
}

# -- HTML --------------------------------------------------------------------
html_theme = "pydata_sphinx_theme"
html_title = f"skvae {release}"
html_static_path = ["_static"]
html_css_files = ["skvae.css"]
html_show_sourcelink = False
html_theme_options = {
    "navbar_align": "left",
    "header_links_before_dropdown": 7,
    "show_toc_level": 2,
    "navigation_with_keys": False,
    "secondary_sidebar_items": ["page-toc"],
    "footer_start": ["copyright"],
    "footer_end": ["sphinx-version"],
    # The theme's default would ask the network for a version switcher.
    "check_switcher": False,
}
# Pages without sub-pages get the full width instead of an empty sidebar.
html_sidebars = {
    page: []
    for page in ["index", "getting_started", "diagnostics", "benchmarks", "developers"]
}

# -- Gallery -----------------------------------------------------------------
sphinx_gallery_conf = {
    "examples_dirs": str(ROOT / "examples"),
    "gallery_dirs": "auto_examples",
    # Only plot_*.py run; any helper module beside them is left alone.
    "filename_pattern": r"/plot_",
    "ignore_pattern": r"(__init__|/_)",
    "within_subsection_order": "FileNameSortKey",
    "doc_module": ("skvae",),
    "backreferences_dir": "gen_modules/backreferences",
    "reference_url": {"skvae": None},
    "reset_modules": ("matplotlib",),
    "download_all_examples": False,
    "min_reported_time": 1,
    "show_memory": False,
    # A failing example fails the build: a gallery page without its plots
    # is worse than no page.
    "only_warn_on_example_error": False,
    "abort_on_example_error": False,
    # The timings page would load scripts from CDNs; each example's page states
    # its own running time.
    "write_computation_times": False,
}

# -- Math --------------------------------------------------------------------
# Macros used across the user guide, so the equations read the same everywhere.
# The offline bundle is MathJax 3, whose configuration this is; Sphinx writes
# mathjax3_config and mathjax4_config out the same way (window.MathJax).
mathjax3_config = {
    "tex": {
        "macros": {
            "E": r"\mathbb{E}",
            "KL": r"\operatorname{KL}",
            "N": r"\mathcal{N}",
            "R": r"\mathbb{R}",
            "ELBO": r"\operatorname{ELBO}",
        }
    }
}


# -- Events --------------------------------------------------------------------
def _skip_foreign_members(app, what, name, obj, skip, options):
    """Document what skvae defines, including what an estimator inherits from
    skvae's base class, but not the methods of scikit-learn's mixins or of
    torch's modules: those are documented upstream (and listed on the API
    page), and their docstrings link to pages this site does not have."""
    defined_in = getattr(getattr(obj, "fget", obj), "__module__", None) or ""
    if what == "class" and not defined_in.startswith("skvae"):
        return True
    return None


# A fitted attribute's name ends in "_", which reStructuredText reads as a
# link to a target of that name: "shape (n_samples, n_features_in_)" in a
# numpydoc type fails the build. Escaping the underscore keeps the docstrings
# in scikit-learn's plain-text style. Prose in double backquotes is literal
# already, and doctest lines are never parsed as markup.
_TRAILING_UNDERSCORE = re.compile(r"(?<![\w`])([A-Za-z]\w*?)_(?=[,)])")


def _escape_trailing_underscores(app, what, name, obj, options, lines):
    for i, line in enumerate(lines):
        if line.lstrip().startswith((">>>", "...")):
            continue
        parts = line.split("``")
        # Even-numbered parts lie outside ``literals``.
        parts[::2] = [_TRAILING_UNDERSCORE.sub(r"\1\\_", p) for p in parts[::2]]
        lines[i] = "``".join(parts)


def setup(app):
    app.connect("autodoc-skip-member", _skip_foreign_members)
    # Before numpydoc (priority 500) turns the sections into markup.
    app.connect("autodoc-process-docstring", _escape_trailing_underscores, priority=400)
