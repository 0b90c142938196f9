"""
====================================
Token clusters of handwritten digits
====================================

A vision transformer sees an image as a set of patch tokens. Here every 8x8 digit of
scikit-learn's bundled digits is cut into 16 patches of 2x2 pixels; each token holds its
four pixels and a one-hot code of its position (20 features), reduced to 8 by a
:class:`~skconvexattn.TokenPCA`.

A gated self-attention head lets token ``t`` attend to token ``t'`` through gate ``p``
only when both lie on the same side of the gate's hyperplane. After the fit,
:meth:`~skconvexattn.ConvexSelfAttentionClassifier.transform` gives every token the
pattern of sides of the *active* gates (those whose weight block is non-zero), as an
integer: cluster ``k`` is the same region of token space in every image. This example
colours every patch by its cluster (see :ref:`clusters`).
"""

# %%
# Fit a gated self-attention head
# -------------------------------
import matplotlib.pyplot as plt
import numpy as np
from matplotlib.colors import BoundaryNorm, ListedColormap
from sklearn.model_selection import train_test_split
from sklearn.pipeline import make_pipeline

from skconvexattn import ConvexSelfAttentionClassifier, TokenPCA
from skconvexattn.datasets import load_digits_tokens

digits = load_digits_tokens(patch_size=2)
X, y = digits.data, digits.target
print("tokens per image, features per token:", X.shape[1:])

train, test = train_test_split(
    np.arange(len(y)), train_size=400, test_size=300, stratify=y, random_state=0
)
# alpha=3e-3 is about 0.05 * alpha_max_ here (alpha_max_ = 0.061); on other data, set it
# as a fraction of alpha_max_ or use the CV estimator (user guide: "Choosing alpha").
model = make_pipeline(
    TokenPCA(n_components=8),
    ConvexSelfAttentionClassifier(alpha=3e-3, n_gates=4, tol=3e-3, random_state=0),
)
model.fit(X[train], y[train])
head = model[-1]
print(f"test accuracy {model.score(X[test], y[test]):.3f}")
print(f"relative duality gap {head.dual_gap_ / head.objective_:.1e}")
print("nuclear norm of each gate's block:", np.round(head.block_norms(), 2))

# %%
# Cluster ids of the test tokens
# ------------------------------
# ``transform`` of the pipeline runs the PCA and then the head's ``transform``: one
# integer per token, shape ``(n_samples, n_tokens)``.
clusters = model.transform(X[test])
print("cluster ids:", clusters.shape, clusters.dtype)
ids, counts = np.unique(clusters, return_counts=True)
print("tokens per cluster:", dict(zip(ids.tolist(), counts.tolist())))

# %%
# Colour the patches of a few test digits by cluster
# --------------------------------------------------
# Top row: the test digits; bottom row: their 16 patches coloured by cluster id, one
# colour per cluster for the eight largest clusters, grey for the others.
main = ids[np.argsort(-counts)][:8]
palette = plt.get_cmap("tab10").colors
colour_of = {int(k): palette[i] for i, k in enumerate(main)}
cmap = ListedColormap([colour_of.get(int(k), (0.8, 0.8, 0.8)) for k in ids])
norm = BoundaryNorm(np.arange(len(ids) + 1) - 0.5, cmap.N)
rank = np.searchsorted(ids, clusters)  # cluster id -> colour index

grid, p = digits.grid_shape, digits.patch_size
fig, axes = plt.subplots(2, 8, figsize=(10, 2.9))
for j in range(8):
    axes[0, j].imshow(digits.images[test[j]], cmap="gray_r", interpolation="nearest")
    axes[0, j].set_title(f"digit {y[test[j]]}", fontsize=9)
    axes[1, j].imshow(rank[j].reshape(grid), cmap=cmap, norm=norm, interpolation="nearest")
    for ax in axes[:, j]:
        ax.set_xticks([])
        ax.set_yticks([])
axes[0, 0].set_ylabel("image", fontsize=8)
axes[1, 0].set_ylabel("clusters", fontsize=8)
fig.tight_layout()

# %%
# What each main cluster holds
# ----------------------------
# Because a cluster id has the same meaning in every sample, its tokens can be pooled
# over the whole test set: the mean 2x2 patch of the cluster (ink) and where in the
# image its tokens lie. The tokens carry their position (one-hot features), so the
# clusters mix what a patch shows with where it is.
tokens = X[test]
pixels = tokens[:, :, : p * p]
fig, axes = plt.subplots(2, len(main), figsize=(1.4 * len(main), 3.2))
for j, k in enumerate(main):
    mask = clusters == k
    mean_patch = pixels[mask].mean(axis=0).reshape(p, p)
    where = mask.mean(axis=0).reshape(grid)
    axes[0, j].imshow(mean_patch, cmap="gray_r", vmin=0, vmax=1)
    axes[0, j].set_title(f"cluster {k}", fontsize=8, color=colour_of[int(k)])
    axes[1, j].imshow(where, cmap="viridis", vmin=0, vmax=1)
    for ax in axes[:, j]:
        ax.set_xticks([])
        ax.set_yticks([])
axes[0, 0].set_ylabel("mean patch", fontsize=8)
axes[1, 0].set_ylabel("where", fontsize=8)
fig.tight_layout()
plt.show()
