"""
==================================================
Token scaling and PCA before a self-attention head
==================================================

The self-attention head's cost grows as the cube of the number of features per token
``d``: every gate has ``d**3`` lifted features per sample and ``d**3 * n_classes``
weights (see :ref:`memory`). Backbone embeddings have hundreds of features, so a
:class:`~skconvexattn.TokenPCA` brings them down first, usually after a
:class:`~skconvexattn.TokenStandardScaler`. Both fit over *all tokens* of the training
set and apply the same map to every token, so they fit in a
:class:`~sklearn.pipeline.Pipeline` before the head.

Here the tokens are 2x2 patches of the digits with one-hot positions (20 features).
"""

# %%
import time

import matplotlib.pyplot as plt
import numpy as np
from sklearn.model_selection import train_test_split
from sklearn.pipeline import make_pipeline

from skconvexattn import ConvexSelfAttentionClassifier, TokenPCA, TokenStandardScaler
from skconvexattn.datasets import load_digits_tokens

X, y = load_digits_tokens(patch_size=2, return_X_y=True)
X_train, X_test, y_train, y_test = train_test_split(
    X, y, train_size=400, test_size=400, stratify=y, random_state=0
)

# %%
# Explained variance of the token PCA, fitted over the 400 * 16 training tokens.
pca = make_pipeline(TokenStandardScaler(), TokenPCA()).fit(X_train)[-1]
cumulative = np.cumsum(pca.explained_variance_ratio_)
print("cumulative explained variance:", np.round(cumulative[:10], 2))

# %%
# The same pipeline with ``n_components`` = 2, 4 and 6, and how the problem size
# grows with it.
results = []
# alpha=0.03 is 0.018-0.023 * alpha_max_ for k = 2, 4, 6 (alpha_max_ 1.3-1.7), nearly
# the same relative strength; on other data, set alpha as a fraction of alpha_max_ or
# use the CV estimator (user guide: "Choosing alpha").
for k in (2, 4, 6):
    model = make_pipeline(
        TokenStandardScaler(),
        TokenPCA(n_components=k),
        ConvexSelfAttentionClassifier(alpha=0.03, n_gates=4, tol=1e-2, random_state=0),
    )
    start = time.perf_counter()
    model.fit(X_train, y_train)
    seconds = time.perf_counter() - start
    head = model[-1]
    results.append((k, model.score(X_test, y_test), seconds, head.coef_.size))
    print(
        f"d={k}: test {results[-1][1]:.3f}  fit {seconds:4.1f} s  "
        f"lifted features per sample {head.n_gates * k**3:5d}  weights {head.coef_.size:6d}"
    )

# %%
# Accuracy rises with ``d`` while the number of weights grows as ``d**3``.
ks, acc, secs, n_weights = map(np.array, zip(*results))
fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(8, 3))
ax1.plot(np.arange(1, len(cumulative) + 1), cumulative, marker=".")
ax1.set_xlabel("TokenPCA components")
ax1.set_ylabel("cumulative explained variance")
ax2.plot(ks, acc, marker="o", label="test accuracy")
ax2.set_xlabel("features per token d after TokenPCA")
ax2.set_ylabel("test accuracy")
ax3 = ax2.twinx()
ax3.plot(ks, n_weights, marker="s", color="tab:red", label="weights")
ax3.set_yscale("log")
ax3.set_ylabel("number of weights", color="tab:red")
fig.tight_layout()
plt.show()
