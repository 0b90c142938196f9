"""The ``skconvexattn`` command line: fit / predict / info on tiny NumPy files, and one-line
errors (no traceback, non-zero exit status) for bad paths, missing arrays and wrong shapes."""

import json
import os
import subprocess
import sys

import joblib
import numpy as np
import pytest

from skconvexattn.cli import main, trusted_types

sio = pytest.importorskip("skops.io")


def load(path):
    """A model file the CLI wrote: .skops holding only the package's allowed types."""
    if str(path).endswith(".joblib"):
        return joblib.load(path)
    assert set(sio.get_untrusted_types(file=path)) <= set(trusted_types())
    return sio.load(path, trusted=trusted_types())
from skconvexattn.datasets import make_token_clusters

FAST = ["--alpha", "1e-2", "--tol", "1e-3", "--n-gates", "2", "--max-iter", "300"]


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """Tiny token data (40 samples, 4 tokens, 3 features) written as .npz and .npy files."""
    d = tmp_path_factory.mktemp("cli")
    X, y = make_token_clusters(
        n_samples=40, n_tokens=4, n_features=3, random_state=0, return_X_y=True
    )
    np.savez(d / "train.npz", X=X, y=y)
    np.savez(d / "renamed.npz", tokens=X.reshape(len(X), -1), labels=y)
    np.savez(d / "no_y.npz", X=X)
    np.save(d / "X.npy", X)
    np.save(d / "y.npy", y)
    np.save(d / "y_short.npy", y[:7])
    np.save(d / "X_1d.npy", np.zeros(5))
    np.save(d / "X_4d.npy", np.zeros((2, 2, 2, 2)))
    np.save(d / "X_other_tokens.npy", np.zeros((5, 3, 3)))
    (d / "garbage.joblib").write_text("this is not a joblib file")
    return {"dir": d, "X": X, "y": y}


@pytest.fixture(scope="module")
def model_path(data):
    path = data["dir"] / "model.skops"
    rc = main(["fit", str(data["dir"] / "train.npz"), "--head", "attention", *FAST,
               "-o", str(path)])
    assert rc == 0
    return path


def _one_line_error(capsys, rc, *needles):
    """The call failed with status 1 and exactly one stderr line naming the problem."""
    out, err = capsys.readouterr()
    assert rc == 1
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("skconvexattn: error: ")
    assert "Traceback" not in err
    for needle in needles:
        assert needle in lines[0], lines[0]
    return lines[0]


# ---------------------------------------------------------------------------- round trip
def test_fit_save_reload_predict_info(data, model_path, capsys, tmp_path):
    capsys.readouterr()
    est = load(model_path)
    assert type(est).__name__ == "ConvexSelfAttentionClassifier"
    assert est.alpha == 1e-2 and est.n_gates == 2 and est.tol == 1e-3
    assert est.token_shape_ == (4, 3)
    assert est.dual_gap_ <= 1e-3 * est.null_objective_  # the default tol_scale
    assert est.verbose == 0
    # fitted attributes are NumPy: the model loads and predicts without a GPU
    assert isinstance(est.coef_, np.ndarray) and isinstance(est.intercept_, np.ndarray)
    assert all(isinstance(v, np.ndarray) for v in est.gates_.values())

    # predict prints one label per line, equal to the reloaded model's predictions
    assert main(["predict", str(model_path), str(data["dir"] / "train.npz")]) == 0
    out, err = capsys.readouterr()
    printed = np.array([int(v) for v in out.split()])
    np.testing.assert_array_equal(printed, est.predict(data["X"]))

    # predict -o writes an .npy file; X alone in an .npy file is accepted
    preds = tmp_path / "preds.npy"
    assert main(["predict", str(model_path), str(data["dir"] / "X.npy"), "-o", str(preds)]) == 0
    np.testing.assert_array_equal(np.load(preds), est.predict(data["X"]))
    assert "40 predictions written" in capsys.readouterr().out

    # probabilities as CSV
    proba = tmp_path / "proba.csv"
    assert main(["predict", str(model_path), str(data["dir"] / "train.npz"), "--proba",
                 "-o", str(proba)]) == 0
    np.testing.assert_allclose(np.loadtxt(proba, delimiter=",", skiprows=1),
                               est.predict_proba(data["X"]), rtol=1e-6, atol=1e-8)
    assert proba.read_text().splitlines()[0] == "0,1"  # the header names the classes
    capsys.readouterr()

    # info: the head class, parameters, token shape, classes and the certificate
    assert main(["info", str(model_path)]) == 0
    out = capsys.readouterr().out
    for needle in ("ConvexSelfAttentionClassifier", "alpha=0.01", "n_gates=2",
                   "(4, 3)", "classes", "n_iter_", f"{est.n_iter_}", "dual_gap_",
                   "objective_", "alpha_max_", "weights", f"{est.coef_.size:,}"):
        assert needle in out, needle
    assert main(["info", str(model_path), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["head"] == "ConvexSelfAttentionClassifier"
    assert info["token_shape"] == [4, 3]
    assert info["classes"] == [0, 1]
    assert info["n_iter_"] == est.n_iter_
    assert info["dual_gap_"] == pytest.approx(est.dual_gap_)
    assert info["objective_"] == pytest.approx(est.objective_)
    assert info["alpha_max_"] == pytest.approx(est.alpha_max_)
    assert info["n_weights"] == est.coef_.size == 2 * 9 * 3 * 2
    assert info["parameters"]["alpha"] == 1e-2
    assert 0 <= info["active_blocks"] <= 2


@pytest.mark.parametrize("head, cls", [
    ("attention", "ConvexSelfAttentionClassifier"),
    ("mixer", "ConvexMixerClassifier"),
    ("fno", "ConvexFNOClassifier"),
    ("mlp", "ConvexMLPClassifier"),
])
def test_fit_every_head_from_two_npy_files(data, head, cls, tmp_path, capsys):
    path = tmp_path / f"{head}.skops"
    rc = main(["fit", str(data["dir"] / "X.npy"), str(data["dir"] / "y.npy"), "--head", head,
               "--activation", "gated_relu", *FAST, "--random-state", "3", "-o", str(path)])
    assert rc == 0
    out = capsys.readouterr().out
    assert cls in out and "duality gap" in out and str(path) in out
    est = load(path)
    assert type(est).__name__ == cls
    assert est.random_state == 3 and est.activation == "gated_relu"
    assert est.predict(data["X"]).shape == (40,)


def test_fit_renamed_keys_flattened_X_and_fno_options(data, tmp_path, capsys):
    """--x-key/--y-key name the arrays; --n-tokens cuts a 2-D X; --n-modes reaches FNO."""
    path = tmp_path / "fno.skops"
    rc = main(["fit", str(data["dir"] / "renamed.npz"), "--x-key", "tokens", "--y-key",
               "labels", "--n-tokens", "4", "--head", "fno", "--n-modes", "2", *FAST,
               "-o", str(path)])
    assert rc == 0
    est = load(path)
    assert est.token_shape_ == (4, 3) and est.n_modes == 2 and est.n_tokens == 4
    capsys.readouterr()
    # the model fitted on flattened data predicts the 3-D data too
    assert main(["predict", str(path), str(data["dir"] / "X.npy")]) == 0
    assert len(capsys.readouterr().out.split()) == 40


def test_verbose_shows_progress_on_stderr(data, tmp_path, capsys):
    rc = main(["fit", str(data["dir"] / "train.npz"), "--head", "mlp", "--verbose", *FAST,
               "-o", str(tmp_path / "m.joblib")])
    assert rc == 0
    out, err = capsys.readouterr()
    assert "[skconvexattn] iter" in err and "dual gap" in err
    assert "[skconvexattn] iter" not in out  # stdout keeps the summary only


def test_warnings_are_one_line_on_stderr(data, tmp_path, capsys):
    rc = main(["fit", str(data["dir"] / "train.npz"), "--head", "mlp", "--alpha", "100",
               "-o", str(tmp_path / "m.joblib")])
    assert rc == 0
    err = capsys.readouterr().err
    assert err.startswith("skconvexattn: warning: UserWarning: alpha=100 >= alpha_max_")
    assert len(err.strip().splitlines()) == 1


def test_predict_and_info_accept_a_saved_pipeline(data, tmp_path, capsys):
    """A pipeline ending with a head, saved with joblib, works with predict and info, with
    --trust only; saved with skops, without."""
    from sklearn.pipeline import make_pipeline

    from skconvexattn import ConvexMLPClassifier, TokenStandardScaler

    pipe = make_pipeline(TokenStandardScaler(), ConvexMLPClassifier(alpha=1e-2, n_gates=2,
                                                                     tol=1e-3, random_state=0))
    pipe.fit(data["X"], data["y"])
    path = tmp_path / "pipe.joblib"
    joblib.dump(pipe, path)
    assert main(["predict", str(path), str(data["dir"] / "X.npy")]) == 1
    assert "refusing to load" in capsys.readouterr().err
    assert main(["predict", str(path), str(data["dir"] / "X.npy"), "--trust"]) == 0
    out, err = capsys.readouterr()
    assert "warning: --trust" in err
    printed = np.array([int(v) for v in out.split()])
    np.testing.assert_array_equal(printed, pipe.predict(data["X"]))
    skops_path = tmp_path / "pipe.skops"
    sio.dump(pipe, skops_path)
    assert main(["info", str(skops_path)]) == 0
    out = capsys.readouterr().out
    assert "TokenStandardScaler (4, 3) -> ConvexMLPClassifier (4, 3)" in out
    assert "dual_gap_" in out


# ---------------------------------------------------------------------------- errors
@pytest.mark.parametrize("argv, needles", [
    (["fit", "{d}/missing.npz"], ["missing.npz", "no such file"]),
    (["fit", "{d}/no_y.npz"], ["'y'", "--y-key"]),
    (["fit", "{d}/train.npz", "--x-key", "tokens"], ["'tokens'", "--x-key", "'X', 'y'"]),
    (["fit", "{d}/X.npy"], ["labels", ".npz"]),
    (["fit", "{d}/X_1d.npy", "{d}/y.npy"], ["(5,)", "n_tokens"]),
    (["fit", "{d}/X_4d.npy", "{d}/y.npy"], ["(2, 2, 2, 2)"]),
    (["fit", "{d}/X.npy", "{d}/y_short.npy"], ["40 samples", "7 labels"]),
    (["fit", "{d}/garbage.joblib", "{d}/y.npy"], ["garbage.joblib", "NumPy"]),
    (["fit", "{d}/train.npz", "--n-modes", "2"], ["--n-modes", "fno"]),
    (["fit", "{d}/train.npz", "--n-tokens", "3"], ["--n-tokens 3", "4 tokens"]),
    (["fit", "{d}/renamed.npz", "--x-key", "tokens", "--y-key", "labels", "--n-tokens", "5"],
     ["n_tokens=5"]),
])
def test_fit_errors_are_one_line(data, argv, needles, capsys):
    argv = [a.format(d=data["dir"]) for a in argv]
    argv += ["--head", "mlp", "--alpha", "1e-2", "-o", str(data["dir"] / "unused.joblib")]
    _one_line_error(capsys, main(argv), *needles)
    assert not (data["dir"] / "unused.joblib").exists()


def test_fit_bad_parameter_and_output_dir(data, capsys):
    with pytest.raises(SystemExit) as exc:  # checked before the data are read
        main(["fit", str(data["dir"] / "train.npz"), "--head", "attention", "--alpha", "-1",
              "-o", str(data["dir"] / "m.skops")])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "--alpha" in err
    rc = main(["fit", str(data["dir"] / "train.npz"), "--head", "attention", "--alpha", "1",
               "-o", str(data["dir"] / "no_such_dir" / "m.joblib")])
    _one_line_error(capsys, rc, "no_such_dir", "does not exist")


@pytest.mark.parametrize("argv, needles", [
    (["predict", "{d}/missing.joblib", "{d}/train.npz"], ["missing.joblib", "no such file"]),
    (["predict", "{d}/garbage.joblib", "{d}/train.npz"], ["garbage.joblib", "joblib"]),
    (["predict", "{d}/train.npz", "{d}/train.npz"], ["cannot load model"]),
    (["predict", "{model}", "{d}/missing.npz"], ["missing.npz", "no such file"]),
    (["predict", "{model}", "{d}/no_y.npz", "--x-key", "Q"], ["'Q'", "--x-key"]),
    (["predict", "{model}", "{d}/X_other_tokens.npy"], ["(3, 3)", "(4, 3)"]),
    (["predict", "{model}", "{d}/y.npy"], ["(40,)"]),
    (["predict", "{model}", "{d}/train.npz", "-o", "{d}/nowhere/p.npy"], ["nowhere"]),
    (["info", "{d}/missing.joblib"], ["missing.joblib", "no such file"]),
    (["info", "{d}/garbage.joblib"], ["garbage.joblib"]),
    (["info", "{d}"], ["is a directory"]),
])
def test_predict_and_info_errors_are_one_line(data, model_path, argv, needles, capsys):
    argv = [a.format(d=data["dir"], model=model_path) for a in argv]
    _one_line_error(capsys, main(argv), *needles)


def test_usage_errors_exit_2_on_one_line(data, capsys):
    for argv in (["fit", str(data["dir"] / "train.npz"), "--alpha", "1", "-o", "m.joblib"],
                 ["fit", "x.npz", "--head", "transformer", "--alpha", "1", "-o", "m.joblib"],
                 ["predict"], ["frobnicate"]):
        with pytest.raises(SystemExit) as exc:
            main(argv)
        assert exc.value.code == 2
        err = capsys.readouterr().err
        assert len(err.strip().splitlines()) == 1
        assert err.startswith("skconvexattn: error: ")


def test_help_explains_every_command_with_an_example(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["--help"])
    assert exc.value.code == 0
    out = capsys.readouterr().out
    for command in ("fit", "predict", "info", "demo"):
        assert f"skconvexattn {command}" in out
    for command in ("fit", "predict", "info", "demo"):
        with pytest.raises(SystemExit):
            main([command, "--help"])
        out = capsys.readouterr().out
        assert "example" in out and f"skconvexattn {command}" in out
    assert main([]) == 2  # no command: the help, status 2


# ---------------------------------------------------------------------------- python -m
def test_python_m_skconvexattn_subprocess(data, tmp_path):
    env = dict(os.environ, OMP_NUM_THREADS="1")
    model = tmp_path / "m.skops"
    run = subprocess.run(
        [sys.executable, "-m", "skconvexattn", "fit", str(data["dir"] / "train.npz"),
         "--head", "mlp", *FAST, "-o", str(model)],
        capture_output=True, text=True, env=env, timeout=120,
    )
    assert run.returncode == 0, run.stderr
    assert "ConvexMLPClassifier fitted on 40 samples" in run.stdout
    assert model.exists()
    # a bad path: status 1, one line on stderr, no traceback
    run = subprocess.run(
        [sys.executable, "-m", "skconvexattn", "predict", str(model), str(tmp_path / "nope.npz")],
        capture_output=True, text=True, env=env, timeout=120,
    )
    assert run.returncode == 1
    assert run.stdout == ""
    assert run.stderr.count("\n") == 1 and "Traceback" not in run.stderr
    assert run.stderr.startswith("skconvexattn: error: data file")


# ---------------------------------------------------------------------------- safe model files
class _Payload:
    """Unpickling this creates a file: what a hostile model file could do."""

    def __init__(self, path):
        self.path = str(path)

    def __reduce__(self):
        return (open, (self.path, "w"))


@pytest.mark.parametrize("command", ["predict", "info", "score"])
@pytest.mark.parametrize("suffix", [".joblib", ".pkl", ".skops"])
def test_a_crafted_pickle_never_runs(data, tmp_path, capsys, command, suffix):
    import pickle

    marker = tmp_path / "pwned"
    evil = tmp_path / f"evil{suffix}"
    evil.write_bytes(pickle.dumps(_Payload(marker)))
    argv = [command, str(evil)] + ([str(data["dir"] / "train.npz")] if command != "info" else [])
    line = _one_line_error(capsys, main(argv), "refusing to load", "--trust")
    assert not marker.exists(), line
    assert "evil" in line


class ForeignEstimator:
    """A type outside the package's list, saved with skops."""

    def __init__(self):
        self.coef_ = np.zeros(2)

    def predict(self, X):  # pragma: no cover - never called
        return X

    def get_params(self, deep=True):  # pragma: no cover
        return {}


def test_skops_file_with_foreign_types_needs_trust(data, tmp_path, capsys):
    path = tmp_path / "foreign.skops"
    sio.dump({"model": ForeignEstimator()}, path)
    line = _one_line_error(capsys, main(["info", str(path)]), "refusing to load",
                           "ForeignEstimator", "--trust")
    assert "test_cli" in line


@pytest.mark.parametrize("estimator", ["head", "cv", "pipeline"])
def test_every_saved_estimator_has_no_untrusted_types_left(data, tmp_path, estimator):
    from sklearn.pipeline import make_pipeline

    from skconvexattn import ConvexFNOClassifierCV, ConvexMixerClassifier, TokenPCA

    est = {
        "head": ConvexMixerClassifier(n_gates=2, max_iter=20, tol=1e-2),
        "cv": ConvexFNOClassifierCV(alphas=2, cv=2, n_gates=2, max_iter=20, tol=1e-2),
        "pipeline": make_pipeline(TokenPCA(2), ConvexMixerClassifier(n_gates=2, max_iter=20)),
    }[estimator]
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        est.fit(data["X"], data["y"])
    path = tmp_path / "m.skops"
    sio.dump(est, path)
    assert set(sio.get_untrusted_types(file=path)) <= set(trusted_types())
    back = sio.load(path, trusted=trusted_types())
    np.testing.assert_array_equal(back.predict(data["X"]), est.predict(data["X"]))


# ---------------------------------------------------------------------------- fit options
def test_fit_writes_skops_by_default_with_the_default_alpha_ratio(data, tmp_path, capsys,
                                                                 monkeypatch):
    from skconvexattn._base import DEFAULT_ALPHA_RATIO

    monkeypatch.chdir(tmp_path)
    rc = main(["fit", str(data["dir"] / "train.npz"), "--head", "mlp", "--n-gates", "2",
               "--tol", "1e-3"])
    assert rc == 0
    est = load(tmp_path / "model.skops")
    assert est.alpha is None and est.alpha_ratio == DEFAULT_ALPHA_RATIO
    # the default ratio is chosen per data set ("auto"; this one is small: 0.1)
    assert est.alpha_ == pytest.approx(est.alpha_ratio_ * est.alpha_max_)
    assert f"alpha_ / alpha_max_ = {est.alpha_ratio_:.3g}" in capsys.readouterr().out


def test_fit_alpha_ratio_auto_scale_pca_and_score(data, tmp_path, capsys):
    path = tmp_path / "ratio.skops"
    assert main(["fit", str(data["dir"] / "train.npz"), "--head", "mlp", "--n-gates", "2",
                 "--alpha-ratio", "0.05", "-o", str(path)]) == 0
    est = load(path)
    assert est.alpha_ == pytest.approx(0.05 * est.alpha_max_)

    path = tmp_path / "auto.skops"
    assert main(["fit", str(data["dir"] / "train.npz"), "--head", "mlp", "--n-gates", "2",
                 "--alpha", "auto", "--scale", "--pca", "2", "--tol", "1e-3",
                 "-o", str(path)]) == 0
    assert "chosen by cross-validation" in capsys.readouterr().out
    pipe = load(path)
    assert [type(s).__name__ for _, s in pipe.steps] == [
        "TokenStandardScaler", "TokenPCA", "ConvexMLPClassifierCV"]
    assert pipe.steps[-1][1].best_estimator_.token_shape_ == (4, 2)

    assert main(["score", str(path), str(data["dir"] / "train.npz"), "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["accuracy"] == pytest.approx(pipe.score(data["X"], data["y"]))
    assert result["n_samples"] == 40

    assert main(["info", str(path)]) == 0
    out = capsys.readouterr().out
    assert "(4, 3): 4 tokens x 3 features" in out and "ConvexMLPClassifierCV (4, 2)" in out

    assert main(["predict", str(path), str(data["dir"] / "train.npz"), "--proba"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split() == ["0", "1"] and len(lines) == 41


def test_fit_rejects_pca_wider_than_the_tokens(data, capsys):
    rc = main(["fit", str(data["dir"] / "train.npz"), "--head", "mlp", "--pca", "5",
               "-o", str(data["dir"] / "unused.skops")])
    _one_line_error(capsys, rc, "--pca 5", "3 features")


def test_out_of_memory_message_points_to_pca(data, capsys):
    rc = main(["fit", str(data["dir"] / "train.npz"), "--head", "attention",
               "--memory-budget", "1e-7", "-o", str(data["dir"] / "unused.skops")])
    _one_line_error(capsys, rc, "memory_budget", "--pca K")


def test_ctrl_c_saves_the_iterate_with_its_certificate(data, tmp_path, capsys, monkeypatch):
    import skconvexattn._factored as factored_module

    calls = {"n": 0}
    call = factored_module._Objective.__call__

    def interrupted_call(self, x):  # the default solver here: L-BFGS on factors
        calls["n"] += 1
        if calls["n"] == 30:
            raise KeyboardInterrupt
        return call(self, x)

    monkeypatch.setattr(factored_module._Objective, "__call__", interrupted_call)
    path = tmp_path / "interrupted.skops"
    rc = main(["fit", str(data["dir"] / "train.npz"), "--head", "attention", "--n-gates", "2",
               "--alpha-ratio", "1e-3", "--tol", "1e-10", "-o", str(path)])
    assert rc == 130
    out = capsys.readouterr().out
    assert "interrupted" in out and "saved" in out
    est = load(path)
    assert est.interrupted_ and 0 < est.n_iter_ < 30
    assert np.isfinite(est.dual_gap_) and est.dual_gap_ > 0
    assert est.convergence_["iteration"][-1] == est.n_iter_


@pytest.mark.parametrize("argv, needle", [
    (["--alpha", "-1"], "--alpha"),
    (["--n-gates", "0"], "--n-gates"),
    (["--tol", "-5"], "--tol"),
    (["--max-iter", "0"], "--max-iter"),
    (["--alpha-ratio", "2"], "--alpha-ratio"),
    (["--figure", "/nonexistent/dir/fig.png"], "/nonexistent/dir"),
])
def test_demo_checks_its_arguments_first(argv, needle, capsys):
    with pytest.raises(SystemExit) as exc:
        main(["demo", *argv])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and needle in err
    assert "Traceback" not in err
