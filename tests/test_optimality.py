"""Global optimality of ``ConvexSelfAttentionClassifier`` and soundness of its certificate.

Everything here is checked against an *independent* formulation built in the test:

* the lifted features are computed with explicit loops from the SPEC 2.1 formula
  ``Phi_i^(p)[a, k, l] = (1/s) sum_{t, t'} M_p[t, t'] x_t[a] x_t'[k] x_t'[l]`` with explicit
  ``s x s`` masks ``M_p[t, t'] = 1{side_p(x_t) == side_p(x_t')}``,
  ``side_p(x) = (x . H_p + c_p >= 0)`` (the fitted ``gates_``), all-ones for ``linear``;
* the convex program (weighted mean loss + ``alpha * sum_p ||Z_p||_*``, free intercept) is
  written in cvxpy and solved by CLARABEL to tight tolerances;
* the conjugates of the losses are evaluated in closed form and by numerical maximisation
  of ``theta . o - l(o)``.

The certificate test that matters is the one on *under-converged* fits: there the true
suboptimality is large, and ``dual_gap_`` must still bound it from above.
"""

from __future__ import annotations

import functools
import warnings

import numpy as np
import pytest
from scipy.optimize import brentq, minimize
from scipy.special import logsumexp, softmax, xlogy
from sklearn.exceptions import ConvergenceWarning

from skconvexattn import ConvexSelfAttentionClassifier
from skconvexattn._datafits import get_datafit

cp = pytest.importorskip("cvxpy")

LOSSES = ("log_loss", "squared_error")

# --------------------------------------------------------------------------- helpers


def explicit_features(X, H=None, c=None):
    """SPEC 2.1 lifted features with explicit s x s masks: ``(n, P, d*d, d)``."""
    n, s, d = X.shape
    P = 1 if H is None else H.shape[0]
    Phi = np.zeros((n, P, d, d, d))
    for i in range(n):
        for p in range(P):
            if H is None:
                M = np.ones((s, s))
            else:
                side = np.array([X[i, t] @ H[p] + c[p] >= 0 for t in range(s)])
                M = (side[:, None] == side[None, :]).astype(float)
            for t in range(s):
                for u in range(s):
                    Phi[i, p] += M[t, u] * np.multiply.outer(
                        X[i, t], np.multiply.outer(X[i, u], X[i, u])
                    )
    return Phi.reshape(n, P, d * d, d) / s


def explicit_logits(Phi, Z, b):
    """``o_i[b] = sum_{p, r, l} Phi_i[p, r, l] Z_p[r, (l, b)] + b`` (columns row-major)."""
    n, P, R, L = Phi.shape
    c = Z.shape[-1] // L
    return np.einsum("nprl,prlb->nb", Phi, Z.reshape(P, R, L, c)) + b[None, :]


def mean_loss(O, Y, w, loss):
    if loss == "log_loss":
        per = logsumexp(O, axis=1) - np.sum(O * Y, axis=1)
    else:
        per = 0.5 * np.sum((O - Y) ** 2, axis=1)
    return float(w @ per)


def nuclear(Z):
    return float(sum(np.linalg.svd(Zp, compute_uv=False).sum() for Zp in Z))


def explicit_objective(Phi, Z, b, Y, w, alpha, loss):
    return mean_loss(explicit_logits(Phi, Z, b), Y, w, loss) + alpha * nuclear(Z)


def explicit_gradient_blocks(Phi, U):
    """``G_p = sum_i Phi_i^(p) (x) U_i`` as ``(P, d*d, d*c)`` blocks."""
    n, P, R, L = Phi.shape
    return np.einsum("nprl,nb->prlb", Phi, U).reshape(P, R, L * U.shape[1])


def cvxpy_solve(Phi, Y, w, alpha, loss, fit_intercept):
    """The convex program in cvxpy; returns (optimal value, Z, b)."""
    if "CLARABEL" not in cp.installed_solvers():
        pytest.skip("CLARABEL is not installed")
    n, P, R, L = Phi.shape
    c = Y.shape[1]
    Zs = [cp.Variable((R, L * c)) for _ in range(P)]
    O = 0
    for p in range(P):
        for l in range(L):
            O = O + Phi[:, p, :, l] @ Zs[p][:, l * c : (l + 1) * c]
    if fit_intercept:
        b = cp.Variable(c)
        O = O + np.ones((n, 1)) @ cp.reshape(b, (1, c), order="C")
    if loss == "log_loss":
        data = w @ (cp.log_sum_exp(O, axis=1) - cp.sum(cp.multiply(Y, O), axis=1))
    else:
        data = 0.5 * cp.sum_squares(cp.multiply(np.sqrt(w)[:, None], O - Y))
    objective = data + alpha * sum(cp.normNuc(Z) for Z in Zs)
    prob = cp.Problem(cp.Minimize(objective))
    prob.solve(
        solver="CLARABEL",
        tol_gap_abs=1e-11,
        tol_gap_rel=1e-11,
        tol_feas=1e-11,
        tol_ktratio=1e-9,
        max_iter=500,
    )
    assert prob.status in ("optimal", "optimal_inaccurate"), prob.status
    Z = np.stack([Zp.value for Zp in Zs])
    bv = np.asarray(b.value) if fit_intercept else np.zeros(c)
    return float(prob.value), Z, bv


LABELS = np.array([-1, 2, 5])


def make_data(n, s, d, c, seed):
    """Tokens with a weak class signal; labels are non-contiguous integers."""
    rng = np.random.default_rng(seed)
    y_idx = np.arange(n) % c
    rng.shuffle(y_idx)
    shift = rng.standard_normal((c, d))
    X = rng.standard_normal((n, s, d)) + 0.6 * shift[y_idx][:, None, :]
    return X, LABELS[:c][y_idx], y_idx


def one_hot(y_idx, c):
    return np.eye(c)[y_idx]


def gates_of(est):
    if est.activation == "linear":
        return None, None
    return est.gates_["H"], est.gates_["c"]


def fit(X, y, sample_weight=None, **params):
    """Fit silently (alpha >= alpha_max and convergence warnings are checked elsewhere)."""
    est = ConvexSelfAttentionClassifier(random_state=0, **params)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        est.fit(X, y, sample_weight=sample_weight)
    return est


def read_alpha_max(X, y, sample_weight=None, **params):
    """alpha_max_ (and the gates it was computed with) from a cheap all-zero fit."""
    est = fit(X, y, sample_weight, alpha=1e8, **params)
    return est.alpha_max_, est


# An L8 orthogonal array over six two-level factors: every pair of levels of any two
# factors occurs, so 8 fits cover shape x classes x activation x loss x intercept x alpha.
#        (s, d, c, activation,   loss,            fit_intercept, alpha / alpha_max)
CASES = [
    (3, 3, 2, "linear", "log_loss", True, 0.1),
    (3, 3, 2, "linear", "squared_error", False, 0.5),
    (3, 3, 3, "gated_relu", "log_loss", False, 0.5),
    (3, 3, 3, "gated_relu", "squared_error", True, 0.1),
    (4, 2, 2, "gated_relu", "log_loss", True, 0.5),
    (4, 2, 2, "gated_relu", "squared_error", False, 0.1),
    (4, 2, 3, "linear", "log_loss", False, 0.1),
    (4, 2, 3, "linear", "squared_error", True, 0.5),
]
CASE_IDS = [
    f"s{s}d{d}c{c}-{act}-{loss}-{'icpt' if fi else 'noicpt'}-{frac}"
    for s, d, c, act, loss, fi, frac in CASES
]
N_SAMPLES = 12
# the checks below compare the gap with the objective: fit to that scale
TIGHT = dict(tol=1e-9, tol_scale="objective", max_iter=20000)


class Solved:
    """A case fitted to tol=1e-10 and solved by cvxpy (cached across tests)."""

    def __init__(self, case, weighted=False):
        s, d, c, act, loss, fi, frac = case
        self.s, self.d, self.c, self.loss, self.fit_intercept = s, d, c, loss, fi
        self.X, self.y, self.y_idx = make_data(N_SAMPLES, s, d, c, seed=s * 10 + d + c)
        if weighted:
            rng = np.random.default_rng(7)
            sw = rng.uniform(0.2, 3.0, N_SAMPLES)
            sw[3] = 0.0  # a zero weight must remove the sample from the program
        else:
            sw = None
        self.sample_weight = sw
        self.w = np.full(N_SAMPLES, 1.0 / N_SAMPLES) if sw is None else sw / sw.sum()
        self.Y = one_hot(self.y_idx, c)
        params = dict(activation=act, n_gates=2, loss=loss, fit_intercept=fi)
        self.params = params
        amax, est0 = read_alpha_max(self.X, self.y, sw, **params)
        self.alpha_max = amax
        self.alpha = frac * amax
        with warnings.catch_warnings():
            warnings.simplefilter("error", ConvergenceWarning)
            self.est = ConvexSelfAttentionClassifier(
                alpha=self.alpha, random_state=0, **params, **TIGHT
            ).fit(self.X, self.y, sample_weight=sw)
        H, cg = gates_of(self.est)
        if H is not None:  # the gates do not depend on alpha
            np.testing.assert_array_equal(H, est0.gates_["H"])
            np.testing.assert_array_equal(cg, est0.gates_["c"])
        self.Phi = explicit_features(self.X, H, cg)
        self.p_cvx, self.Z_cvx, self.b_cvx = cvxpy_solve(
            self.Phi, self.Y, self.w, self.alpha, loss, fi
        )
        # Every (Z, b) is feasible (the program is unconstrained), so the objective at any
        # point is an upper bound on the optimum: the best one is the reference below.
        self.p_cvx_point = explicit_objective(
            self.Phi, self.Z_cvx, self.b_cvx, self.Y, self.w, self.alpha, loss
        )
        self.p_star = min(self.p_cvx_point, self.est.objective_)


@functools.lru_cache(maxsize=None)
def solved(case, weighted=False):
    return Solved(case, weighted)


# --------------------------------------------------------------------------- features


def test_explicit_features_match_spec_special_cases():
    """Sanity of the test's own features: all-ones masks give ``xbar (x) X^T X``, and a
    gate whose hyperplane leaves every token on one side is the linear case."""
    X, _, _ = make_data(5, 3, 3, 2, seed=0)
    Phi = explicit_features(X)
    xbar = X.mean(axis=1)
    G = np.einsum("nta,ntb->nab", X, X)
    ref = np.einsum("na,nkl->nakl", xbar, G).reshape(5, 1, 9, 3)
    np.testing.assert_allclose(Phi, ref, rtol=1e-13, atol=1e-13)
    H = np.zeros((2, 3))
    Phi_g = explicit_features(X, H, np.array([1.0, -1.0]))  # all tokens on one side
    np.testing.assert_allclose(Phi_g, np.concatenate([Phi, Phi], axis=1), rtol=1e-13)


@pytest.mark.parametrize("s, d", [(3, 3), (4, 2)])
def test_package_features_equal_explicit_masks(s, d):
    """The package's side-split features equal the explicit-mask formula."""
    from skconvexattn.heads.attention import self_attention_features

    rng = np.random.default_rng(s + d)
    X = rng.standard_normal((6, s, d))
    H, c = rng.standard_normal((3, d)), 0.3 * rng.standard_normal(3)
    np.testing.assert_allclose(
        self_attention_features(X, H, c), explicit_features(X, H, c), rtol=1e-12, atol=1e-13
    )
    np.testing.assert_allclose(
        self_attention_features(X), explicit_features(X), rtol=1e-12, atol=1e-13
    )


# --------------------------------------------------------------------------- optimum


@pytest.mark.parametrize("case", CASES, ids=CASE_IDS)
def test_objective_matches_cvxpy(case):
    """(i) The FISTA optimum equals the independent cvxpy optimum."""
    S = solved(case)
    assert S.est.dual_gap_ <= 1e-9 * S.est.objective_ + 1e-15
    assert S.est.objective_ == pytest.approx(S.p_cvx, rel=1e-6)
    # tighter in practice; the cvxpy point itself evaluates to the same value
    assert S.est.objective_ == pytest.approx(S.p_cvx_point, rel=1e-8)
    # the predictions agree with cvxpy's solution (the loss is strictly convex in the
    # logits, up to a per-sample shift for the log-loss, so they are unique even when Z
    # is not)
    O_est = explicit_logits(S.Phi, S.est.coef_, S.est.intercept_)
    O_cvx = explicit_logits(S.Phi, S.Z_cvx, S.b_cvx)
    if S.loss == "log_loss":
        # logits are unique up to a per-sample shift: compare probabilities
        np.testing.assert_allclose(softmax(O_est, axis=1), softmax(O_cvx, axis=1), atol=1e-4)
    else:
        np.testing.assert_allclose(O_est, O_cvx, atol=1e-4)


@pytest.mark.parametrize("case", CASES, ids=CASE_IDS)
def test_objective_recomputed_from_coef(case):
    """(iii) ``objective_`` is the primal objective of ``coef_``/``intercept_``."""
    S = solved(case)
    est = S.est
    ours = explicit_objective(S.Phi, est.coef_, est.intercept_, S.Y, S.w, S.alpha, S.loss)
    assert est.objective_ == pytest.approx(ours, rel=1e-11)
    if not S.fit_intercept:
        np.testing.assert_array_equal(est.intercept_, 0.0)
    assert est.coef_.shape == (1 if est.activation == "linear" else 2, S.d**2, S.d * S.c)


@pytest.mark.parametrize("case", CASES, ids=CASE_IDS)
def test_certificate_converged(case):
    """(ii) At convergence the gap still bounds the (tiny) true suboptimality."""
    S = solved(case)
    est = S.est
    assert est.dual_gap_ >= -1e-12 * abs(est.objective_)
    assert est.dual_gap_ >= est.objective_ - S.p_cvx - 1e-9
    assert est.dual_gap_ >= est.objective_ - S.p_star - 1e-9


@pytest.mark.parametrize(
    "solver, max_iter",
    # FISTA, and L-BFGS on factors through the lifted features (what "auto" takes here),
    # which needs far fewer iterations: its first ones are where it is far from optimal
    [("fista", 5), ("fista", 20), ("fista", 50), ("auto", 1), ("auto", 3), ("auto", 10)],
)
@pytest.mark.parametrize("case", CASES, ids=CASE_IDS)
def test_certificate_under_converged(case, solver, max_iter):
    """(ii) The real test of the certificate: stopped early, the suboptimality is large,
    and every recorded gap (not only the last) must still be an upper bound on it."""
    S = solved(case)
    est = ConvexSelfAttentionClassifier(
        alpha=S.alpha, random_state=0, max_iter=max_iter, tol=1e-10, solver=solver,
        **S.params
    )
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        est.fit(S.X, S.y)
    warned = any(issubclass(r.category, ConvergenceWarning) for r in caught)
    subopt = est.objective_ - S.p_star
    # easy cases may certify 1e-10 before max_iter; otherwise the warning is raised
    stopped_early = est.dual_gap_ <= 1e-10 * est.objective_
    assert warned == (not stopped_early)
    assert est.n_iter_ == max_iter or stopped_early
    # objective_ really is the objective of the returned point
    ours = explicit_objective(S.Phi, est.coef_, est.intercept_, S.Y, S.w, S.alpha, S.loss)
    assert est.objective_ == pytest.approx(ours, rel=1e-11)
    assert subopt >= -1e-9
    assert est.dual_gap_ >= subopt - 1e-9
    hist = est.convergence_
    assert hist["iteration"][-1] == est.n_iter_
    assert hist["objective"][-1] == est.objective_
    for obj, gap in zip(hist["objective"], hist["dual_gap"]):
        assert gap >= obj - S.p_star - 1e-9
    if max_iter in (5, 1):
        # the test has teeth: after 5 FISTA iterations (1 of L-BFGS) every case is
        # suboptimal by far more than the reference's accuracy (about 1e-11), and the
        # certificate must cover that
        assert subopt > 1e-7
    assert est.solver_ == ("fista" if solver == "fista" else "factored")


class _ExplicitOperator:
    """Just what ``duality_gap`` needs (the adjoint), from the test's explicit features."""

    def __init__(self, Phi):
        self.Phi = Phi
        self.block_shape = Phi.shape[1:]

    def adjoint(self, U):
        return explicit_gradient_blocks(self.Phi, U)


@pytest.mark.parametrize("case", CASES, ids=CASE_IDS)
def test_certificate_at_arbitrary_points(case):
    """The package's gap formula bounds the suboptimality of *any* point, not only of
    FISTA iterates: random weights of several sizes, the zero model with a wrong
    intercept (which exercises the intercept correction of the dual point hardest)."""
    from skconvexattn._solver import primal_dual_values as duality_gap

    S = solved(case)
    df = get_datafit(S.loss)
    op = _ExplicitOperator(S.Phi)
    prior = S.w @ S.Y
    rng = np.random.default_rng(1)
    points = [(np.zeros_like(S.est.coef_), 2.0 * rng.standard_normal(S.c))]
    for size in (1e-3, 1e-1, 1.0):
        Z = size * rng.standard_normal(S.est.coef_.shape)
        points.append((Z, rng.standard_normal(S.c)))
    points.append((S.est.coef_ + 1e-3 * rng.standard_normal(S.est.coef_.shape), S.est.intercept_))
    for Z, b in points:
        if not S.fit_intercept:
            b = np.zeros(S.c)
        O = explicit_logits(S.Phi, Z, b)
        primal, dual = duality_gap(
            op, df, S.Y, S.w, S.alpha, O, nuclear(Z), prior, S.fit_intercept
        )
        primal, dual = float(primal), float(dual)
        ours = explicit_objective(S.Phi, Z, b, S.Y, S.w, S.alpha, S.loss)
        assert primal == pytest.approx(ours, rel=1e-12)
        assert np.isfinite(dual)
        assert dual <= S.p_star + 1e-9  # weak duality
        assert primal - dual >= primal - S.p_star - 1e-9


# --------------------------------------------------------------------------- weights


WEIGHTED_CASES = [CASES[0], CASES[3], CASES[4], CASES[7]]
WEIGHTED_IDS = [CASE_IDS[i] for i in (0, 3, 4, 7)]


@pytest.mark.parametrize("case", WEIGHTED_CASES, ids=WEIGHTED_IDS)
def test_sample_weight_matches_weighted_cvxpy(case):
    """(iv) With sample weights the package solves the weighted-mean program."""
    S = solved(case, weighted=True)
    est = S.est
    assert est.objective_ == pytest.approx(S.p_cvx, rel=1e-6)
    ours = explicit_objective(S.Phi, est.coef_, est.intercept_, S.Y, S.w, S.alpha, S.loss)
    assert est.objective_ == pytest.approx(ours, rel=1e-11)
    assert est.dual_gap_ >= est.objective_ - S.p_star - 1e-9
    with pytest.warns(ConvergenceWarning):
        early = ConvexSelfAttentionClassifier(
            alpha=S.alpha, random_state=0, max_iter=2, tol=1e-10, **S.params
        ).fit(S.X, S.y, sample_weight=S.sample_weight)
    assert early.dual_gap_ >= early.objective_ - S.p_star - 1e-9
    assert early.objective_ - S.p_star > 0


def test_integer_sample_weight_equals_duplication():
    """Integer weights and repeated samples define the same program and the same gates."""
    X, y, _ = make_data(10, 3, 3, 2, seed=3)
    sw = np.array([1, 2, 1, 3, 1, 1, 2, 1, 1, 2])
    params = dict(alpha=0.02, activation="gated_relu", n_gates=2, tol=1e-9, max_iter=20000)
    a = fit(X, y, sw, **params)
    b = fit(np.repeat(X, sw, axis=0), np.repeat(y, sw), **params)
    np.testing.assert_allclose(a.gates_["H"], b.gates_["H"], rtol=1e-12)
    np.testing.assert_allclose(a.gates_["c"], b.gates_["c"], rtol=1e-12)
    assert a.objective_ == pytest.approx(b.objective_, rel=1e-8)
    assert a.alpha_max_ == pytest.approx(b.alpha_max_, rel=1e-12)


# --------------------------------------------------------------------------- alpha_max


@pytest.mark.parametrize("case", CASES, ids=CASE_IDS)
def test_alpha_max_independent(case):
    """``alpha_max_`` = max_p ||G_p||_2 of the gradient at Z = 0 and the best intercept."""
    S = solved(case)
    prior = S.w @ S.Y
    if S.fit_intercept:
        b0 = np.log(prior) if S.loss == "log_loss" else prior
    else:
        b0 = np.zeros(S.c)
    O0 = np.zeros((N_SAMPLES, S.c)) + b0
    theta = softmax(O0, axis=1) - S.Y if S.loss == "log_loss" else O0 - S.Y
    G = explicit_gradient_blocks(S.Phi, S.w[:, None] * theta)
    ref = max(np.linalg.norm(Gp, 2) for Gp in G)
    assert S.alpha_max == pytest.approx(ref, rel=1e-10)


@pytest.mark.parametrize("fit_intercept", [True, False])
@pytest.mark.parametrize("loss", LOSSES)
@pytest.mark.parametrize("factor", [1.0, 1.5])
def test_alpha_at_or_above_alpha_max_gives_zero_model(loss, fit_intercept, factor):
    """alpha >= alpha_max_ warns and returns Z = 0 with the best intercept, which is the
    cvxpy optimum too."""
    X, y, y_idx = make_data(N_SAMPLES, 3, 3, 3, seed=11)
    sw = np.linspace(0.5, 2.0, N_SAMPLES)
    params = dict(activation="gated_relu", n_gates=2, loss=loss, fit_intercept=fit_intercept)
    amax, _ = read_alpha_max(X, y, sw, **params)
    est = ConvexSelfAttentionClassifier(alpha=factor * amax, random_state=0, **params)
    with pytest.warns(UserWarning, match="alpha_max"):
        est.fit(X, y, sample_weight=sw)
    np.testing.assert_array_equal(est.coef_, 0.0)
    w = sw / sw.sum()
    prior = w @ one_hot(y_idx, 3)
    if not fit_intercept:
        expected = np.zeros(3)
    elif loss == "log_loss":
        expected = np.log(prior)
    else:
        expected = prior
    np.testing.assert_allclose(est.intercept_, expected, rtol=1e-12, atol=1e-15)
    Phi = explicit_features(X, est.gates_["H"], est.gates_["c"])
    Y = one_hot(y_idx, 3)
    p_cvx, _, _ = cvxpy_solve(Phi, Y, w, factor * amax, loss, fit_intercept)
    assert est.objective_ == pytest.approx(p_cvx, rel=1e-6)
    assert est.dual_gap_ >= est.objective_ - p_cvx - 1e-9


@pytest.mark.parametrize("fit_intercept", [True, False])
@pytest.mark.parametrize("loss", LOSSES)
def test_alpha_max_is_tight(loss, fit_intercept):
    """Just below alpha_max_ the solution is nonzero and beats the all-zero model."""
    X, y, y_idx = make_data(N_SAMPLES, 4, 2, 2, seed=5)
    params = dict(activation="linear", loss=loss, fit_intercept=fit_intercept)
    amax, zero = read_alpha_max(X, y, **params)
    alpha = 0.95 * amax
    est = fit(X, y, alpha=alpha, **params, **TIGHT)
    assert np.abs(est.coef_).max() > 0
    assert nuclear(est.coef_) > 0
    Phi = explicit_features(X)
    Y = one_hot(y_idx, 2)
    w = np.full(N_SAMPLES, 1.0 / N_SAMPLES)
    zero_obj = explicit_objective(Phi, zero.coef_, zero.intercept_, Y, w, alpha, loss)
    assert est.objective_ < zero_obj - est.dual_gap_
    p_cvx, Z_cvx, _ = cvxpy_solve(Phi, Y, w, alpha, loss, fit_intercept)
    assert est.objective_ == pytest.approx(p_cvx, rel=1e-6)
    assert p_cvx < zero_obj


# --------------------------------------------------------------------------- predictions


@pytest.mark.parametrize("case", CASES, ids=CASE_IDS)
def test_predictions_equal_explicit_logits(case):
    """decision_function / predict / predict_proba on new data use the stored gates."""
    S = solved(case)
    est = S.est
    X_new, _, _ = make_data(7, S.s, S.d, S.c, seed=99)
    H, cg = gates_of(est)
    O = explicit_logits(explicit_features(X_new, H, cg), est.coef_, est.intercept_)
    scores = est.decision_function(X_new)
    if S.c == 2:
        np.testing.assert_allclose(scores, O[:, 1] - O[:, 0], rtol=1e-10, atol=1e-12)
    else:
        np.testing.assert_allclose(scores, O, rtol=1e-10, atol=1e-12)
    np.testing.assert_array_equal(est.predict(X_new), LABELS[: S.c][np.argmax(O, axis=1)])
    np.testing.assert_array_equal(est.classes_, LABELS[: S.c])
    # the same data flattened to (n, s*d) gives the same scores (SPEC 5)
    np.testing.assert_allclose(est.decision_function(X_new.reshape(7, -1)), scores, rtol=1e-13)
    if S.loss == "log_loss":
        np.testing.assert_allclose(est.predict_proba(X_new), softmax(O, axis=1), rtol=1e-10)
    # training logits too
    O_train = explicit_logits(S.Phi, est.coef_, est.intercept_)
    np.testing.assert_array_equal(est.predict(S.X), LABELS[: S.c][np.argmax(O_train, axis=1)])


# --------------------------------------------------------------------------- dual point


def _random_problem(loss, seed, c, scale, n=9):
    rng = np.random.default_rng(seed)
    O = scale * rng.standard_normal((n, c))
    y_idx = np.concatenate([np.arange(c), rng.integers(0, c, n - c)])
    Y = one_hot(y_idx, c)
    w = rng.uniform(0.1, 1.0, n)
    w[-1] = 0.0  # zero-weight samples are allowed
    w /= w.sum()
    return O, Y, w, w @ Y


def conjugate_closed_form(loss, theta, Y):
    """``l*(theta_i)`` per sample (``+inf`` outside the domain)."""
    if loss == "log_loss":
        Q = theta + Y
        inside = np.all(Q >= -1e-12, axis=1) & np.isclose(Q.sum(axis=1), 1.0, atol=1e-12)
        val = np.sum(xlogy(np.clip(Q, 0, None), np.clip(Q, 0, None)), axis=1)
        return np.where(inside, val, np.inf)
    return 0.5 * np.sum(theta**2, axis=1) + np.sum(theta * Y, axis=1)


def conjugate_numerical(loss, theta_i, y_i):
    """``sup_o theta . o - l(o, y)`` by numerical maximisation (no closed form used)."""
    c = theta_i.shape[0]

    def neg(o):
        if loss == "log_loss":
            val = logsumexp(o) - o[y_i]
            grad = softmax(o) - np.eye(c)[y_i]
        else:
            val = 0.5 * np.sum((o - np.eye(c)[y_i]) ** 2)
            grad = o - np.eye(c)[y_i]
        return val - theta_i @ o, grad - theta_i

    res = minimize(neg, np.zeros(c), jac=True, method="BFGS", options={"gtol": 1e-12})
    return -res.fun


CASES_DUAL = [
    (loss, fi, seed, c, scale)
    for loss in LOSSES
    for fi in (True, False)
    for seed, c, scale in [(0, 2, 1.0), (1, 3, 1.0), (2, 4, 3.0), (3, 3, 40.0)]
]


@pytest.mark.parametrize("loss, fit_intercept, seed, c, scale", CASES_DUAL)
def test_dual_candidate_is_dual_feasible(loss, fit_intercept, seed, c, scale):
    """The dual point is in the conjugate's domain, and balanced when there is an
    intercept; scaling it towards zero (as the certificate does) keeps it feasible."""
    O, Y, w, prior = _random_problem(loss, seed, c, scale)
    df = get_datafit(loss)
    theta = np.asarray(df.dual_candidate(O, Y, w, prior, fit_intercept))
    assert theta.shape == O.shape and np.all(np.isfinite(theta))
    if fit_intercept:
        np.testing.assert_allclose(w @ theta, 0.0, atol=1e-14)
    for sc in (1.0, 0.37, 0.0):
        if loss == "log_loss":
            Q = sc * theta + Y
            assert np.all(Q >= 0.0) and np.all(Q <= 1.0)
            np.testing.assert_allclose(Q.sum(axis=1), 1.0, rtol=0, atol=1e-14)
        assert np.all(np.isfinite(conjugate_closed_form(loss, sc * theta, Y)))


@pytest.mark.parametrize("loss, fit_intercept, seed, c, scale", CASES_DUAL)
def test_value_and_gradient_fused(loss, fit_intercept, seed, c, scale):
    """The solver's fused loss pass equals the separate value and gradient, and the
    gradient is the finite-difference derivative of the value."""
    O, Y, w, prior = _random_problem(loss, seed, c, scale)
    df = get_datafit(loss)
    v, G = df.value_and_gradient(O, Y, w)
    assert float(v) == pytest.approx(float(df.value(O, Y, w)), rel=1e-14)
    np.testing.assert_allclose(G, df.raw_gradient(O, Y), rtol=1e-13, atol=1e-15)
    rng = np.random.default_rng(seed)
    D = rng.standard_normal(O.shape)
    h = 1e-6
    fd = (float(df.value(O + h * D, Y, w)) - float(df.value(O - h * D, Y, w))) / (2 * h)
    assert fd == pytest.approx(float(np.sum(w[:, None] * G * D)), rel=1e-6, abs=1e-9)


@pytest.mark.parametrize("loss, fit_intercept, seed, c, scale", CASES_DUAL)
def test_dual_value_is_minus_weighted_conjugate(loss, fit_intercept, seed, c, scale):
    """``dual_value(theta) = -sum_i w_i l*(theta_i)``, closed forms computed here."""
    O, Y, w, prior = _random_problem(loss, seed, c, scale)
    df = get_datafit(loss)
    theta = np.asarray(df.dual_candidate(O, Y, w, prior, fit_intercept))
    for sc in (1.0, 0.37, 0.0):
        ref = -float(w @ conjugate_closed_form(loss, sc * theta, Y))
        assert float(df.dual_value(sc * theta, Y, w)) == pytest.approx(ref, rel=1e-12, abs=1e-15)


@pytest.mark.parametrize("loss", LOSSES)
@pytest.mark.parametrize("fit_intercept", [True, False])
def test_dual_value_matches_numerical_conjugate(loss, fit_intercept):
    """The conjugate by numerical maximisation of ``theta . o - l(o)``, one sample at a time."""
    O, Y, w, prior = _random_problem(loss, 4, 3, 1.0, n=6)
    df = get_datafit(loss)
    theta = np.asarray(df.dual_candidate(O, Y, w, prior, fit_intercept))
    y_idx = np.argmax(Y, axis=1)
    for sc in (1.0, 0.5):
        conj = np.array(
            [conjugate_numerical(loss, sc * theta[i], y_idx[i]) for i in range(len(w))]
        )
        np.testing.assert_allclose(conj, conjugate_closed_form(loss, sc * theta, Y), atol=1e-8)
        assert float(df.dual_value(sc * theta, Y, w)) == pytest.approx(-(w @ conj), abs=1e-8)


@pytest.mark.parametrize("loss, fit_intercept, seed, c, scale", CASES_DUAL)
def test_fenchel_young(loss, fit_intercept, seed, c, scale):
    """Equality ``l(o) + l*(theta) = theta . o`` at ``theta = grad l(o)``; inequality at the
    (possibly shifted) dual candidate; weak duality for the per-sample pair."""
    O, Y, w, prior = _random_problem(loss, seed, c, scale)
    df = get_datafit(loss)
    grad = np.asarray(df.raw_gradient(O, Y))
    lhs = float(df.value(O, Y, w)) - float(df.dual_value(grad, Y, w))
    rhs = float(np.sum(w[:, None] * grad * O))
    assert lhs == pytest.approx(rhs, rel=1e-10, abs=1e-12)
    # per sample, with one-hot weights
    for i in range(len(w)):
        e = np.zeros(len(w))
        e[i] = 1.0
        li = float(df.value(O, Y, e)) - float(df.dual_value(grad, Y, e))
        assert li == pytest.approx(grad[i] @ O[i], rel=1e-10, abs=1e-10)
    theta = np.asarray(df.dual_candidate(O, Y, w, prior, fit_intercept))
    lhs_c = float(df.value(O, Y, w)) - float(df.dual_value(theta, Y, w))
    assert lhs_c >= float(np.sum(w[:, None] * theta * O)) - 1e-12


@pytest.mark.parametrize("loss", LOSSES)
@pytest.mark.parametrize("seed, c", [(0, 2), (1, 3), (2, 4)])
def test_dual_candidate_is_gradient_at_optimal_intercept(loss, seed, c):
    """At the optimal intercept for fixed logits the candidate is the plain gradient."""
    O, Y, w, prior = _random_problem(loss, seed, c, 1.0)
    df = get_datafit(loss)
    if loss == "squared_error":
        b = prior - w @ O
    else:
        # solve sum_i w_i softmax(o_i + b) = prior one coordinate at a time (b[0] = 0)
        b = np.zeros(c)
        for _ in range(200):
            for k in range(1, c):
                def f(bk, k=k):
                    bb = b.copy()
                    bb[k] = bk
                    return w @ softmax(O + bb, axis=1)[:, k] - prior[k]

                b[k] = brentq(f, -60, 60, xtol=1e-15)
        np.testing.assert_allclose(w @ softmax(O + b, axis=1), prior, atol=1e-12)
    Ob = O + b
    grad = np.asarray(df.raw_gradient(Ob, Y))
    np.testing.assert_allclose(w @ grad, 0.0, atol=1e-12)
    theta = np.asarray(df.dual_candidate(Ob, Y, w, prior, True))
    np.testing.assert_allclose(theta, grad, atol=1e-10)
    np.testing.assert_allclose(np.asarray(df.dual_candidate(O, Y, w, prior, False)),
                               np.asarray(df.raw_gradient(O, Y)), rtol=0, atol=0)


@pytest.mark.parametrize("loss", LOSSES)
def test_intercept_at_zero_is_optimal(loss):
    """``intercept_at_zero(prior)`` minimises the weighted loss of the all-zero model."""
    _, Y, w, prior = _random_problem(loss, 8, 3, 1.0)
    df = get_datafit(loss)
    b0 = np.asarray(df.intercept_at_zero(prior))
    O0 = np.zeros_like(Y) + b0
    np.testing.assert_allclose(w @ np.asarray(df.raw_gradient(O0, Y)), 0.0, atol=1e-14)
    f0 = float(df.value(O0, Y, w))
    rng = np.random.default_rng(0)
    for _ in range(5):
        assert float(df.value(O0 + 1e-3 * rng.standard_normal(3), Y, w)) >= f0
