"""The documentation builds with warnings as errors, running every gallery example.

This is the build of the docs (``sphinx-build -W --keep-going -b html docs
docs/_build/html``) into a temporary directory; it takes about half a minute on two cores.
Skipped when the ``docs`` extra (Sphinx, numpydoc, pydata-sphinx-theme, sphinx-gallery,
matplotlib) is not installed.
"""

import os
import pathlib
import subprocess
import sys

import pytest

for module in ("sphinx", "numpydoc", "pydata_sphinx_theme", "sphinx_gallery", "matplotlib"):
    pytest.importorskip(module, reason=f"the docs extra is not installed ({module} missing)")

DOCS = pathlib.Path(__file__).resolve().parent.parent / "docs"


def test_docs_build_with_warnings_as_errors(tmp_path):
    out = tmp_path / "html"
    env = dict(
        os.environ,
        OMP_NUM_THREADS="1",
        MPLBACKEND="agg",
        SKCONVEXATTN_DOCS_RUN_STALE="1",  # run every example, even if cached
    )
    run = subprocess.run(
        [sys.executable, "-m", "sphinx", "-W", "--keep-going", "-E", "-b", "html",
         "-d", str(tmp_path / "doctrees"), str(DOCS), str(out)],
        capture_output=True, text=True, env=env, timeout=1200,
    )
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-6000:]

    # the user guide pages the package's docstrings refer to
    for page in ("index", "certificate", "clusters", "memory", "gpu", "distributed", "cli",
                 "alpha", "convexity", "heads", "preprocessing", "api"):
        assert (out / f"{page}.html").is_file(), page
    # an API page for every public class and function of the package
    import skconvexattn

    generated = {p.name for p in (out / "generated").glob("*.html")}
    for name in skconvexattn.__all__:
        if name != "__version__":
            assert f"skconvexattn.{name}.html" in generated, name
    for name in ("load_digits_tokens", "make_token_clusters"):
        assert f"skconvexattn.datasets.{name}.html" in generated, name
    # every gallery example ran and produced at least one figure
    examples = sorted((DOCS.parent / "examples").glob("plot_*.py"))
    assert len(examples) >= 5
    for script in examples:
        assert (out / "auto_examples" / f"{script.stem}.html").is_file(), script.name
        images = list((out / "_images").glob(f"sphx_glr_{script.stem}_*.png"))
        assert images, f"{script.name} made no figure"
