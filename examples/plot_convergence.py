"""
===========================================
Convergence and the duality-gap certificate
===========================================

The solver (accelerated proximal gradient) evaluates a *duality gap* every few
iterations: the primal objective minus the value of a dual-feasible point. The gap is an
upper bound on how far the current objective is from the global optimum, so the fit
stops with a certificate once ``dual_gap <= tol * objective`` (see :ref:`certificate`).
Every evaluation is recorded in ``convergence_``.
"""

# %%
import matplotlib.pyplot as plt
import numpy as np

from skconvexattn import ConvexSelfAttentionClassifier
from skconvexattn.datasets import make_token_clusters

X, y = make_token_clusters(n_samples=200, random_state=0, return_X_y=True)

fits = {}
for loss in ("log_loss", "squared_error"):
    # alpha=0.02 is about 0.005 * alpha_max_ on these data (alpha_max_ = 3.69 for both
    # losses); the figure needs one fixed problem. On new data, set alpha as a fraction
    # of alpha_max_, or use ConvexSelfAttentionClassifierCV (user guide: "Choosing alpha").
    est = ConvexSelfAttentionClassifier(
        alpha=0.02, n_gates=4, loss=loss, tol=1e-6, max_iter=5000, random_state=0
    )
    fits[loss] = est.fit(X, y)
    print(
        f"{loss:13s} iterations {est.n_iter_:5d}  objective {est.objective_:.6f}  "
        f"dual gap {est.dual_gap_:.1e}  relative {est.dual_gap_ / est.objective_:.1e}"
    )

# %%
# ``convergence_`` holds the iteration, objective, duality gap and elapsed time of every
# gap evaluation (one every ten iterations). Left: for the log loss, the objective of the
# iterate (an upper bound on the optimum) and the best dual value so far,
# ``objective - dual_gap`` (a lower bound); the optimum lies between the two curves. The
# objective need not decrease monotonically (the method is accelerated). Right: the
# relative gap of both fits falls below ``tol``, where they stop.
fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(9, 3.2))
hist = fits["log_loss"].convergence_
it = np.asarray(hist["iteration"])
obj = np.asarray(hist["objective"])
lower = obj - np.asarray(hist["dual_gap"])
ax1.plot(it, obj, label="objective (upper bound)")
ax1.plot(it, lower, label="dual value (lower bound)")
ax1.set_ylim(lower[2] - 0.02, obj[2] + 0.02)
ax1.set_xlabel("iteration")
ax1.set_ylabel("log_loss objective")
ax1.legend()
for loss, est in fits.items():
    hist = est.convergence_
    rel = np.asarray(hist["dual_gap"]) / np.asarray(hist["objective"])
    ax2.plot(hist["iteration"], rel, label=loss)
ax2.axhline(1e-6, color="k", ls="--", lw=0.8, label="tol")
ax2.set_yscale("log")
ax2.set_xlabel("iteration")
ax2.set_ylabel("relative duality gap")
ax2.legend()
fig.tight_layout()
plt.show()
