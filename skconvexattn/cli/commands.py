"""The commands ``fit``, ``predict``, ``score`` and ``info`` of the command line."""

from __future__ import annotations

import contextlib
import json
import sys
import time

import numpy as np

from .._penalty import active_singular_values
from .io import (
    PROG,
    CommandError,
    check_output_path,
    jsonable,
    load_data,
    load_model,
    one_line,
    reported_warnings,
    save_model,
)

__all__ = ["cmd_fit", "cmd_predict", "cmd_score", "cmd_info", "describe"]


def _convex_head(model):
    """The convex head of a model: itself, or the last step of a pipeline."""
    from .._base import BaseConvexHead

    steps = getattr(model, "steps", None)
    last = steps[-1][1] if steps else model
    last = getattr(last, "best_estimator_", last)  # a *CV estimator: its refitted head
    return last if isinstance(last, BaseConvexHead) else None


def _build_model(args):
    """The estimator ``fit`` trains: the head (or its ``*CV`` for ``--alpha auto``), after
    ``TokenStandardScaler`` (``--scale``) and ``TokenPCA`` (``--pca K``) when asked."""
    from ..heads import get_head, registered_heads

    spec = get_head(args.head)
    cls = spec.estimator
    params = {}
    for name in ("activation", "n_gates", "n_tokens", "tol", "max_iter", "max_time", "loss",
                 "device", "memory_budget", "random_state"):
        value = getattr(args, name)
        if value is not None:
            params[name] = value
    for other in registered_heads():  # the options a head adds (FNO's --n-modes, ...)
        for opt in other.options:
            value = getattr(args, opt.param, None)
            if value is None or opt.param in params:
                continue
            if opt not in spec.options:
                owners = [h.name for h in registered_heads() if opt in h.options]
                raise CommandError(
                    f"{opt.flag} applies to --head {', '.join(owners)} only, not --head "
                    f"{args.head}"
                )
            params[opt.param] = value
    if args.verbose:
        params["verbose"] = args.verbose
    if args.alpha == "auto":
        from ..model_selection import cv_estimator

        cls = cv_estimator(cls)
    elif args.alpha is not None:
        params["alpha"] = args.alpha
    elif args.alpha_ratio is not None:
        params["alpha_ratio"] = args.alpha_ratio
    steps = []
    if args.scale or args.pca:
        from ..preprocessing import TokenPCA, TokenStandardScaler

        if args.n_tokens is not None:
            # the transformers cut a flattened X first; the head then gets 3-D tokens
            n_tokens = params.pop("n_tokens")
            if args.scale:
                steps.append(TokenStandardScaler(n_tokens=n_tokens))
            if args.pca:
                steps.append(TokenPCA(args.pca, n_tokens=None if args.scale else n_tokens,
                                      random_state=args.random_state))
        else:
            if args.scale:
                steps.append(TokenStandardScaler())
            if args.pca:
                steps.append(TokenPCA(args.pca, random_state=args.random_state))
    head = cls(**params)
    if not steps:
        return head
    from sklearn.pipeline import make_pipeline

    return make_pipeline(*steps, head)


def cmd_fit(args):
    model = _build_model(args)
    check_output_path(args.output, "model")
    X, y = load_data(args.data, args.x_key, args.y_key, need_y=True)
    if args.n_tokens is not None and X.ndim == 3 and X.shape[1] != args.n_tokens:
        raise CommandError(
            f"--n-tokens {args.n_tokens} contradicts X of shape {X.shape}, which already has "
            f"{X.shape[1]} tokens; --n-tokens is for a flattened X (n_samples, "
            "n_tokens * n_features)"
        )
    if args.pca:
        d = X.shape[2] if X.ndim == 3 else X.shape[1] // (args.n_tokens or 1)
        if args.pca > d:
            raise CommandError(
                f"--pca {args.pca} keeps more components than the {d} features per token of X"
            )
    name = type(model).__name__ if not hasattr(model, "steps") else " -> ".join(
        type(step).__name__ for _, step in model.steps
    )
    shape = "x".join(str(v) for v in X.shape)
    if args.verbose:
        print(f"{PROG}: fitting {name} on X of shape {shape}", file=sys.stderr)
    start = time.perf_counter()
    interrupted = False
    # the solver's progress lines go to stderr, so that stdout holds the summary only
    try:
        with reported_warnings(), contextlib.redirect_stdout(sys.stderr):
            try:
                model.fit(X, y)
            except ValueError as exc:
                raise _with_pca_hint(exc)
            except MemoryError:
                raise CommandError(
                    "out of memory while fitting: reduce the features per token with --pca K "
                    "(e.g. --pca 16), use fewer --n-gates, or lower --memory-budget"
                )
    except KeyboardInterrupt:
        head = _convex_head(model)
        if head is None or not getattr(head, "interrupted_", False):
            raise
        interrupted = True  # the head kept the iterate reached and its certificate
    seconds = time.perf_counter() - start
    last = model.steps[-1][1] if hasattr(model, "steps") else model
    fitted = getattr(last, "best_estimator_", last)  # the head (refitted, for --alpha auto)
    last.set_params(verbose=0)  # progress printing is not part of the saved model
    fitted.set_params(verbose=0)
    save_model(model, args.output)
    s, d = fitted.token_shape_
    scale = fitted._gap_scale(fitted.objective_, getattr(fitted, "null_objective_", None))
    rel = fitted.dual_gap_ / max(scale, 1e-300)
    print(
        f"{name} fitted on {X.shape[0]} samples ({s} tokens x {d} features, "
        f"{len(fitted.classes_)} classes) in {seconds:.2f} s on {fitted.device_}"
    )
    alpha_line = f"alpha_ {fitted.alpha_:.4g} (alpha_ / alpha_max_ = " + (
        f"{fitted.alpha_ / fitted.alpha_max_:.3g})" if fitted.alpha_max_ > 0 else "-)"
    )
    if fitted is not last:
        alpha_line += " chosen by cross-validation"
    print(
        f"iterations {fitted.n_iter_}, objective {fitted.objective_:.6g}, duality gap "
        f"{fitted.dual_gap_:.3g} (relative {rel:.2g}, tol {fitted.tol:g}), alpha_max_ "
        f"{fitted.alpha_max_:.4g}, {alpha_line}"
    )
    if interrupted:
        print(
            f"interrupted (Ctrl-C) at iteration {fitted.n_iter_}: saved the iterate reached "
            f"with its certificate (relative duality gap {rel:.2g})"
        )
    print(f"training accuracy {model.score(X, y):.4f}")
    print(f"model saved to {args.output}")
    return 130 if interrupted else 0


def _with_pca_hint(exc):
    """The memory planner's refusal, with the CLI's way to reduce the features."""
    text = str(exc)
    if "memory_budget=" in text:
        return CommandError(
            f"{one_line(text)} In the CLI: --pca K (e.g. --pca 16) reduces the features per "
            "token, --n-gates the gates."
        )
    return exc


def cmd_predict(args):
    model = load_model(args.model, trust=args.trust)
    X, _ = load_data([args.data], args.x_key, "y", need_y=False)
    if args.output:
        check_output_path(args.output, "predictions")
    with reported_warnings():
        if args.proba:
            if not hasattr(model, "predict_proba"):
                raise CommandError(
                    "--proba needs a model fitted with loss='log_loss' (this one gives "
                    "scores, not probabilities)"
                )
            out = model.predict_proba(X)
        else:
            out = model.predict(X)
    if args.output:
        path = args.output
        try:
            if path.endswith((".txt", ".csv")):
                fmt = "%.8g" if args.proba else "%s"
                header = ",".join(str(jsonable(c)) for c in model.classes_) if args.proba else ""
                np.savetxt(path, out, fmt=fmt, delimiter=",", header=header, comments="")
            else:
                np.save(path, out)
                path = path if path.endswith(".npy") else path + ".npy"
        except OSError as exc:
            raise CommandError(f"cannot write predictions {path!r}: {one_line(exc)}")
        what = "probability rows" if args.proba else "predictions"
        print(f"{len(out)} {what} written to {path}")
    else:
        if args.proba:  # a header naming the class of each column
            print(" ".join(str(jsonable(c)) for c in model.classes_))
        for row in out:
            if args.proba:
                print(" ".join(f"{p:.6f}" for p in row))
            else:
                print(row)
    return 0


def cmd_score(args):
    model = load_model(args.model, trust=args.trust)
    X, y = load_data(args.data, args.x_key, args.y_key, need_y=True)
    with reported_warnings():
        accuracy = model.score(X, y)
    if args.json:
        print(json.dumps({"accuracy": float(accuracy), "n_samples": int(X.shape[0])}))
    else:
        print(f"accuracy {accuracy:.4f} on {X.shape[0]} samples")
    return 0


def describe(model):
    """A dict describing a fitted model (what ``skconvexattn info`` prints)."""
    from .. import __version__

    info = {"estimator": type(model).__name__, "skconvexattn_version": __version__}
    head = _convex_head(model)
    if hasattr(model, "steps"):
        info["pipeline"] = [type(step).__name__ for _, step in model.steps]
        # each step by the token shape it takes: (n_tokens, n_features) per sample
        info["step_input_shapes"] = [_input_shape(step) for _, step in model.steps]
    info["input_shape"] = _input_shape(model.steps[0][1] if hasattr(model, "steps") else model)
    if head is None:
        info["parameters"] = {k: repr(v) for k, v in model.get_params(deep=False).items()}
        return info
    info["head"] = type(head).__name__
    info["parameters"] = {k: jsonable(v) for k, v in sorted(head.get_params().items())}
    s, d = head.token_shape_
    info["token_shape"] = [int(s), int(d)]
    info["classes"] = [jsonable(c) for c in head.classes_]
    info["n_iter_"] = int(head.n_iter_)
    info["objective_"] = float(head.objective_)
    info["dual_gap_"] = float(head.dual_gap_)
    info["relative_gap"] = float(head.dual_gap_ / max(abs(head.objective_), 1e-300))
    info["alpha_max_"] = float(head.alpha_max_)
    # the absolute alpha of the fit (older models without alpha_ had an absolute alpha)
    alpha_ = getattr(head, "alpha_", None)
    info["alpha_"] = float(alpha_ if alpha_ is not None else head.get_params()["alpha"])
    s_, d_ = head.token_shape_
    P, R, L = head._block_shape(s_, d_)
    block_shape = (P, R, L * len(head.classes_))
    info["n_weights"] = int(np.prod(block_shape))
    info["n_intercepts"] = int(np.size(head.intercept_))
    info["block_shape"] = [int(v) for v in block_shape]
    # the rule of to_nonconvex(): one recovered head per active singular value
    live = active_singular_values(head._singular_values())  # (P, k)
    info["active_blocks"] = int(np.count_nonzero(live.any(axis=1)))
    info["recovered_heads"] = int(np.count_nonzero(live))
    info["device_"] = getattr(head, "device_", None)
    info["memory_plan_"] = getattr(head, "memory_plan_", None)
    return info


def _input_shape(est):
    """``[n_tokens, n_features]`` a fitted step takes, or ``[n_features_in_]``."""
    shape = getattr(est, "token_shape_", None)
    if shape is not None:
        return [int(v) for v in shape]
    n = getattr(est, "n_features_in_", None)
    return [int(n)] if n is not None else None


def cmd_info(args):
    model = load_model(args.model, trust=args.trust)
    info = describe(model)
    if args.json:
        print(json.dumps(info, indent=2))
        return 0
    lines = [("file", args.model)]
    if info.get("input_shape"):
        shape = info["input_shape"]
        lines.append((
            "input",
            f"({shape[0]}, {shape[1]}): {shape[0]} tokens x {shape[1]} features per token"
            if len(shape) == 2 else f"{shape[0]} features",
        ))
    if "pipeline" in info:
        lines.append(("pipeline", " -> ".join(
            f"{name} {tuple(shape) if shape else ''}".rstrip()
            for name, shape in zip(info["pipeline"], info["step_input_shapes"])
        )))
    if "head" not in info:
        lines.append(("estimator", info["estimator"]))
        lines.append(("parameters", ", ".join(f"{k}={v}" for k, v in info["parameters"].items())))
        lines.append(("note", "no convex head found: not a model saved by 'skconvexattn fit'"))
    else:
        P, R, C = info["block_shape"]
        c = len(info["classes"])
        s, d = info["token_shape"]
        params = ", ".join(f"{k}={v!r}" for k, v in info["parameters"].items())
        classes = ", ".join(str(k) for k in info["classes"][:20])
        if c > 20:
            classes += ", ..."
        lines += [
            ("head", f"{info['head']} (skconvexattn {info['skconvexattn_version']})"),
            ("parameters", params),
            ("token shape", f"({s}, {d}): {s} tokens x {d} features per token"),
            ("classes", f"{c}: {classes}"),
            ("n_iter_", str(info["n_iter_"])),
            ("objective_", f"{info['objective_']:.8g}"),
            ("dual_gap_", f"{info['dual_gap_']:.3g} (relative {info['relative_gap']:.2g})"),
            (
                "alpha_",
                f"{info['alpha_']:.6g} (alpha_ / alpha_max_ = "
                f"{info['alpha_'] / info['alpha_max_']:.3g})"
                if info["alpha_max_"] > 0
                else f"{info['alpha_']:.6g}",
            ),
            ("alpha_max_", f"{info['alpha_max_']:.6g}"),
            (
                "weights",
                f"{info['n_weights']:,} convex weights in {P} blocks of {R} x {C} "
                f"(+ {info['n_intercepts']} intercepts)",
            ),
            (
                "solution",
                f"{info['active_blocks']} of {P} blocks non-zero, "
                f"{info['recovered_heads']} recovered heads/neurons (total rank)",
            ),
            ("fitted on", f"{info['device_']}, lifted features {info['memory_plan_']}"),
        ]
    width = max(len(k) for k, _ in lines)
    for key, value in lines:
        print(f"{key:<{width}}  {value}")
    return 0
