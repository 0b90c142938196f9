"""
==================================
Choosing alpha by cross-validation
==================================

``alpha`` weighs the nuclear norms of the weight blocks, the convex form of weight
decay. It is best searched on a log scale below ``alpha_max_``, the smallest value that
gives the all-zero model (see :ref:`alpha`). The heads are ordinary scikit-learn
estimators, so :class:`~sklearn.model_selection.GridSearchCV` does the search.
"""

# %%
import warnings

import matplotlib.pyplot as plt
import numpy as np
from sklearn.model_selection import GridSearchCV

from skconvexattn import ConvexSelfAttentionClassifier
from skconvexattn.datasets import make_token_clusters

X, y = make_token_clusters(
    n_samples=240, signal=0.3, cluster_std=0.5, random_state=0, return_X_y=True
)
head = ConvexSelfAttentionClassifier(n_gates=4, tol=1e-2, max_iter=3000, random_state=0)

# %%
# ``alpha_max_`` from a one-iteration fit on all the data (it does not depend on
# ``alpha``); the grid spans fractions of it.
with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    alpha_max = head.set_params(max_iter=1).fit(X, y).alpha_max_
head.set_params(max_iter=3000)
ratios = np.array([0.5, 0.2, 0.1, 0.03])
print(f"alpha_max_ = {alpha_max:.3f}")

search = GridSearchCV(head, {"alpha": ratios * alpha_max}, cv=3)
search.fit(X, y)
print("best alpha:", search.best_params_["alpha"], f"({search.best_score_:.3f})")

# %%
# The CV score against ``alpha / alpha_max_``: too much regularisation underfits (the
# model approaches the intercept-only model), too little overfits and takes more
# iterations to certify.
res = search.cv_results_
fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(8, 3))
ax1.errorbar(ratios, res["mean_test_score"], yerr=res["std_test_score"], marker="o")
ax1.set_xscale("log")
ax1.set_xlabel("alpha / alpha_max_")
ax1.set_ylabel("CV accuracy")
ax2.plot(ratios, res["mean_fit_time"], marker="o")
ax2.set_xscale("log")
ax2.set_xlabel("alpha / alpha_max_")
ax2.set_ylabel("mean fit time (s)")
fig.tight_layout()
plt.show()
