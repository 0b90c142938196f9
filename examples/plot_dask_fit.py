"""
=====================================
One fit across a Dask cluster
=====================================

A head fits a ``dask.array`` of token features chunked along samples: the chunks stay on
the workers that hold them, every product of the solver runs there, and only small
arrays (the weights going out, the logits and gradient parts coming back) cross to the
client. The fitted model is the in-memory fit of the same data, with the same
certificate (see :ref:`distributed`).

Here a ``LocalCluster`` of two in-process workers (quick to start) stands in for a real
cluster; worker processes (``processes=True``) or a scheduler elsewhere,
``Client("tcp://scheduler:8786")``, change nothing else. The data are made *on the
workers*, chunk by chunk, so the client never holds them.
"""

# %%
import dask
import dask.array as da
import matplotlib.pyplot as plt
import numpy as np
from dask.distributed import Client, LocalCluster

from skconvexattn import ConvexSelfAttentionClassifier
from skconvexattn.datasets import make_token_clusters

N_CHUNKS, M = 4, 150  # 4 chunks of 150 sequences of 8 tokens with 6 features


def make_chunk(i):
    """Chunk ``i`` of the data set: in practice, read a shard of the encoder's output."""
    return make_token_clusters(n_samples=M, n_features=6, random_state=i, return_X_y=True)


# %%
# A cluster and a Dask array chunked along samples. (The client's log of recent
# messages would keep every product's rows: switched off, see the docs.)
dask.config.set({"distributed.admin.low-level-log-length": 0})
cluster = LocalCluster(n_workers=2, processes=False, threads_per_worker=1,
                       dashboard_address=":0")
client = Client(cluster)

parts = [dask.delayed(make_chunk)(i) for i in range(N_CHUNKS)]
X = da.concatenate(
    [da.from_delayed(p[0], shape=(M, 8, 6), dtype=np.float64) for p in parts]
)
X = client.persist(X)  # made and kept on the workers
# the labels are small (one per sequence): they may live on the client
y = np.concatenate(dask.compute(*[p[1] for p in parts]))
print(X)

# %%
# The fit: the same call as in memory. ``memory_plan_`` tells how the data were
# split.
head = ConvexSelfAttentionClassifier(n_gates=2, alpha_ratio=0.3, tol=1e-3, random_state=0,
                                     solver="fista")
head.fit(X, y)
print(head.memory_plan_)
print(f"objective {head.objective_:.6f}, certified gap {head.dual_gap_:.1e}, "
      f"{head.n_iter_} iterations")

# %%
# Predictions on a Dask array are lazy Dask arrays, computed chunk by chunk on the
# workers.
proba = head.predict_proba(X)
print(proba)
print("training accuracy:", float((head.predict(X) == y).mean().compute()))

# %%
# The same fit in memory (here the data are small enough to gather): the same
# objective (here to rounding: both runs take the same steps).
X_local = X.compute()
local = ConvexSelfAttentionClassifier(n_gates=2, alpha_ratio=0.3, tol=1e-3, random_state=0,
                                      solver="fista").fit(X_local, y)
print(f"relative difference of the objectives: "
      f"{abs(local.objective_ - head.objective_) / local.objective_:.1e}")

fig, ax = plt.subplots(figsize=(5, 3))
for est, label in ((local, "in memory"), (head, "Dask, 2 workers")):
    h = est.convergence_
    ax.semilogy(h["iteration"], np.maximum(h["relative_gap"], 1e-12), marker="o",
                label=label)
ax.set_xlabel("iteration")
ax.set_ylabel("relative duality gap")
ax.legend()
fig.tight_layout()

client.close()
cluster.close()
