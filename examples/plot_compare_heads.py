"""
==================================
Comparing the heads on one problem
==================================

:func:`~skconvexattn.datasets.make_token_clusters` draws token matrices whose label is
invisible in the mean token: it says how the tokens of two latent clusters are placed
relative to each other. Average pooling alone (a logistic regression on the mean token)
is at chance level; the heads differ in how they let tokens interact.

Each head is fitted with ``alpha`` set to the same fraction of its own ``alpha_max_``
(the smallest ``alpha`` giving the all-zero model), because the scale of ``alpha``
differs from head to head (see :ref:`alpha`).
"""

# %%
import time

import matplotlib.pyplot as plt
import numpy as np
from sklearn.base import clone
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import train_test_split

from skconvexattn.datasets import make_token_clusters
from skconvexattn.heads import registered_heads

data = make_token_clusters(n_samples=600, random_state=0)
X_train, X_test, y_train, y_test = train_test_split(
    data.data, data.target, test_size=0.5, random_state=0
)
print("X:", data.data.shape, " classes:", np.bincount(data.target))

baseline = LogisticRegression().fit(X_train.mean(axis=1), y_train)
print(f"logistic regression on the mean token: {baseline.score(X_test.mean(axis=1), y_test):.3f}")


# %%
# ``alpha_max_`` depends on the data and the gates but not on ``alpha``:
# ``compute_alpha_max`` gives it from the gradient at zero, without a fit; the fit then
# uses a fraction of it (the same as ``alpha_ratio=0.01``).
def fit_relative(estimator, X, y, ratio=0.01):
    est = clone(estimator).set_params(alpha=ratio * estimator.compute_alpha_max(X, y))
    start = time.perf_counter()
    est.fit(X, y)
    return est, time.perf_counter() - start


# every registered head (skconvexattn.heads), by its label
heads = {spec.label: spec.estimator for spec in registered_heads()}
rows = []
for name, cls in heads.items():
    for activation in ("linear", "gated_relu"):
        est = cls(activation=activation, n_gates=4, tol=1e-3, random_state=0)
        est, seconds = fit_relative(est, X_train, y_train)
        rows.append((name, activation, est.score(X_test, y_test), seconds, est.coef_.size))
        print(
            f"{name:15s} {activation:10s} test {rows[-1][2]:.3f}  fit {seconds:5.2f} s  "
            f"iterations {est.n_iter_:4d}  weights {est.coef_.size:6d}  "
            f"alpha_max_ {est.alpha_max_:.3g}"
        )

# %%
# Self-attention sees the token-token products ``X^T X`` and reads the label, with
# either activation. The Mixer's weights are tied to token *positions*, which carry no
# information here (the tokens are shuffled): the linear Mixer is at chance, the gated
# one gets what its gates see. The gated FNO and the gated token MLP see which tokens
# fall on each side of a gate, which is enough on this easy problem. The linear FNO and
# the linear token MLP reduce to a linear model on the mean token: they are at chance,
# like the baseline.
fig, ax = plt.subplots(figsize=(7, 3.2))
labels = [f"{n}\n{a.replace('_', ' ')}" for n, a, *_ in rows]
colours = ["tab:blue" if a == "linear" else "tab:orange" for _, a, *_ in rows]
ax.bar(range(len(rows)), [r[2] for r in rows], color=colours)
ax.axhline(0.5, color="k", lw=0.8, ls="--", label="chance")
ax.set_xticks(range(len(rows)), labels, fontsize=7)
ax.set_ylabel("test accuracy")
ax.set_ylim(0, 1.05)
ax.legend(loc="lower right")
fig.tight_layout()
plt.show()
