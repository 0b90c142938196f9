"""Sphinx configuration of the skconvexattn documentation.

Build (warnings are errors)::

    pip install -e ".[docs]"
    sphinx-build -W --keep-going -b html docs docs/_build/html

The gallery scripts in ``examples/`` are executed during the build (a few seconds each on
a CPU); ``-D plot_gallery=0`` skips running them.

Links to scikit-learn, NumPy and SciPy (intersphinx) need their inventories from the web:
they are on for Read the Docs builds and with ``SKCONVEXATTN_DOCS_INTERSPHINX=1``, and off
by default so that the build works offline (the references then render as code).
"""

import os
import re

import skconvexattn

# -- project --------------------------------------------------------------------------
project = "skconvexattn"
author = "skconvexattn developers"
copyright = "skconvexattn developers, BSD-3-Clause"
release = skconvexattn.__version__
version = release

# -- extensions -----------------------------------------------------------------------
extensions = [
    "sphinx.ext.autodoc",
    "sphinx.ext.autosummary",
    "sphinx.ext.intersphinx",
    "sphinx.ext.mathjax",
    "numpydoc",
    "sphinx_gallery.gen_gallery",
]

templates_path = ["_templates"]
exclude_patterns = ["_build", "Thumbs.db", ".DS_Store", "**.ipynb_checkpoints"]
root_doc = "index"
default_role = "literal"  # single backticks in docstrings render as code

# API reference: one page per public object, generated from the docstrings.
autosummary_generate = True
autodoc_typehints = "none"
autodoc_default_options = {"member-order": "groupwise"}
numpydoc_show_class_members = False
numpydoc_class_members_toctree = False
numpydoc_attributes_as_param_list = True

# long signatures (the heads have a dozen parameters): one parameter per line
maximum_signature_line_length = 88

# -- intersphinx ------------------------------------------------------------------------
# Fetching the inventories needs the network; an offline build with the mapping on would
# warn (an error under -W). Off unless asked for, or on Read the Docs.
INTERSPHINX = (
    os.environ.get("SKCONVEXATTN_DOCS_INTERSPHINX", "") == "1"
    or os.environ.get("READTHEDOCS", "").lower() == "true"
)
intersphinx_mapping = {
    "python": ("https://docs.python.org/3", None),
    "sklearn": ("https://scikit-learn.org/stable", None),
    "numpy": ("https://numpy.org/doc/stable", None),
    "scipy": ("https://docs.scipy.org/doc/scipy", None),
    "matplotlib": ("https://matplotlib.org/stable", None),
} if INTERSPHINX else {}
intersphinx_timeout = 10

# -- HTML -----------------------------------------------------------------------------
html_theme = "pydata_sphinx_theme"
html_title = f"skconvexattn {release}"
html_theme_options = {
    "navbar_align": "left",
    "show_toc_level": 2,
    "navigation_with_keys": False,
    "footer_start": ["copyright"],
    "footer_end": ["sphinx-version", "theme-version"],
}
html_sidebars = {"index": [], "install": []}
html_static_path = ["_static"]
html_css_files = ["custom.css"]
html_show_sourcelink = False

# -- gallery --------------------------------------------------------------------------
os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("MPLBACKEND", "agg")

sphinx_gallery_conf = {
    "examples_dirs": os.path.join("..", "examples"),
    "gallery_dirs": "auto_examples",
    "filename_pattern": r"/plot_",
    "within_subsection_order": "FileNameSortKey",
    "doc_module": ("skconvexattn",),
    "backreferences_dir": os.path.join("generated", "backreferences"),
    "download_all_examples": False,
    "remove_config_comments": True,
    "abort_on_example_error": False,
    "show_signature": False,
    "min_reported_time": 0,
    "image_scrapers": ("matplotlib",),
    # re-run examples even when their source is unchanged (tests/test_docs.py sets this,
    # so that a change in the package that breaks an example is caught)
    "run_stale_examples": os.environ.get("SKCONVEXATTN_DOCS_RUN_STALE") == "1",
}


# -- inherited scikit-learn docstrings --------------------------------------------------
# Methods inherited from scikit-learn (score, get_params, ...) carry :ref: links to
# scikit-learn's own user guide, which the offline build cannot resolve (and intersphinx
# not always, labels move between releases): keep their text.
_REF_WITH_TITLE = re.compile(r":ref:`([^`<]+?)\s*<[^`>]+>`")
_REF_BARE = re.compile(r":ref:`([^`]+)`")


def _unlink_sklearn_refs(app, what, name, obj, options, lines):
    module = getattr(obj, "__module__", "") or ""
    if not module.startswith("sklearn"):
        return
    for i, line in enumerate(lines):
        line = _REF_WITH_TITLE.sub(r"\1", line)
        lines[i] = _REF_BARE.sub(r"``\1``", line)


def setup(app):
    app.connect("autodoc-process-docstring", _unlink_sklearn_refs, priority=400)
