"""Token features from a pretrained Hugging Face encoder.

:class:`HFTokenEncoder` turns a list of texts into the token array the heads take: the
hidden states of one layer of a ``transformers`` model, one row per kept token, padded
with NaN rows to a common number of tokens (see :func:`~skconvexattn.preprocessing.pad_tokens`).

``transformers`` and ``torch`` are optional (the ``hf`` extra,
``pip install "skconvexattn[hf]"``); they are imported when texts are first encoded.
"""

from __future__ import annotations

import contextlib
from numbers import Integral

import numpy as np
from sklearn.base import BaseEstimator, TransformerMixin, _fit_context
from sklearn.utils._param_validation import Interval, StrOptions

__all__ = ["HFTokenEncoder"]


def _import_hf():
    try:
        import torch
        import transformers
    except ImportError as exc:
        raise ImportError(
            "HFTokenEncoder needs the optional packages transformers and torch, which are "
            'not installed. Install them with `pip install "skconvexattn[hf]"` (or '
            "`pip install transformers torch`)."
        ) from exc
    return torch, transformers


def _check_texts(X):
    """A list of strings (any sequence or 1-D array of str); a lone string is an error."""
    if isinstance(X, (str, bytes)):
        raise ValueError(
            "X must be a list of texts, got a single string; wrap it in a list: "
            "encoder.transform([text])."
        )
    if hasattr(X, "ndim") and getattr(X, "ndim") != 1:
        raise ValueError(
            f"X must be a 1-D sequence of texts; got an array of shape {X.shape}. "
            "Pass one string per sample (e.g. a list, or a DataFrame column)."
        )
    try:
        texts = list(X)
    except TypeError as exc:
        raise ValueError(
            f"X must be a list of texts (strings); got {type(X).__name__}."
        ) from exc
    if not texts:
        raise ValueError("X is empty: pass at least one text.")
    for i, t in enumerate(texts):
        if not isinstance(t, str):
            raise ValueError(
                f"X[{i}] is a {type(t).__name__}, not a string; X must hold one text per "
                "sample (convert the values with str(), or drop missing ones)."
            )
    return texts


class HFTokenEncoder(TransformerMixin, BaseEstimator):
    """Texts to NaN-padded token features with a Hugging Face encoder.

    Every text is tokenised, run through a frozen ``transformers`` model, and the hidden
    state of each kept token at one layer becomes a token row of the output. Samples with
    fewer tokens than the longest (or than ``max_tokens``) are padded with NaN rows, which
    the package treats as padding (:func:`~skconvexattn.preprocessing.padding_mask`).
    The result is what :class:`~skconvexattn.TokenStandardScaler`,
    :class:`~skconvexattn.TokenPCA` and the heads take, so the encoder can open a
    :class:`~sklearn.pipeline.Pipeline`.

    ``fit`` learns nothing (the encoder is frozen); it only checks the parameters. The
    model and tokenizer are loaded on the first call to :meth:`transform` and kept for
    later calls (they are not pickled with the encoder when given by name).

    Parameters
    ----------
    model : str, path or transformers model, default="sentence-transformers/all-MiniLM-L6-v2"
        A model name on the Hugging Face Hub or a local directory (loaded with
        ``transformers.AutoModel.from_pretrained``), or a loaded ``transformers`` model
        (then also pass ``tokenizer``). A loaded model is moved to ``device`` and used in
        evaluation mode, without gradients.
    tokenizer : str, path, transformers tokenizer or None, default=None
        The tokenizer; ``None`` loads the one saved with ``model`` (when ``model`` is a
        name or path).
    layer : int, default=-1
        Which hidden state to return, indexed like the model's ``hidden_states`` output:
        ``0`` is the embedding layer's output, ``num_hidden_layers`` (or ``-1``) the last
        layer.
    special_tokens : {"drop", "keep"}, default="drop"
        Whether the tokenizer's special tokens (``[CLS]``, ``[SEP]``, ``<s>``, ...) become
        token rows. They are always given to the model; ``"drop"`` only leaves their
        hidden states out of the output.
    max_tokens : int or None, default=None
        Token rows per sample of the output. Longer texts are truncated (to their first
        ``max_tokens`` kept tokens); shorter ones are padded with NaN rows. ``None`` pads
        to the longest text of each call, truncated at the model's maximum length: set
        ``max_tokens`` in a pipeline, so that training and test texts give the same number
        of tokens (the heads require it).
    batch_size : int, default=32
        Texts per forward pass. Texts are grouped by length, so batches carry little
        padding; the output does not depend on ``batch_size`` (beyond float rounding).
    dtype : {"float32", "float64"}, default="float32"
        Floating type of the output (the model runs in its own precision).
    device : {"cpu", "cuda", "auto"} or str, default="cpu"
        Where the model runs: ``"auto"`` picks ``"cuda"`` when ``torch.cuda.is_available()``;
        any torch device string (``"cuda:1"``, ``"mps"``) is accepted.
    verbose : int, default=0
        ``> 0`` shows a progress bar over the batches (``tqdm``).

    Attributes
    ----------
    model_ : transformers model
        The model in use, set by the first :meth:`transform`.
    tokenizer_ : transformers tokenizer
        The tokenizer in use, set by the first :meth:`transform` or :meth:`get_tokens`.

    See Also
    --------
    skconvexattn.preprocessing.pad_tokens : Pad token matrices of different lengths.
    skconvexattn.plotting.plot_token_clusters : Draw token clusters on the words.

    Notes
    -----
    The output matches a direct forward pass of each text alone: the attention mask
    keeps padding out of the encoder, so batching changes the hidden states only by
    float rounding (about ``1e-6`` in float32).

    Encoding is the expensive step and learns nothing, so for a search over the head's
    parameters (``GridSearchCV``, the ``*CV`` heads) encode the texts once and search on
    the token array: inside a searched pipeline every clone of the encoder re-encodes
    the texts (and reloads the model when given by name, or deep-copies a loaded one).

    Examples
    --------
    >>> from skconvexattn.encoders import HFTokenEncoder
    >>> enc = HFTokenEncoder("sentence-transformers/all-MiniLM-L6-v2",
    ...                      max_tokens=16)  # doctest: +SKIP
    >>> X = enc.fit_transform(["a fine film", "dull"])  # doctest: +SKIP
    >>> X.shape, X.dtype  # doctest: +SKIP
    ((2, 16, 384), dtype('float32'))
    >>> enc.get_tokens(["a fine film", "dull"])  # doctest: +SKIP
    [['a', 'fine', 'film'], ['dull']]
    """

    _parameter_constraints: dict = {
        "model": [object],
        "tokenizer": [object, None],
        "layer": [Integral],
        "special_tokens": [StrOptions({"drop", "keep"})],
        "max_tokens": [Interval(Integral, 1, None, closed="left"), None],
        "batch_size": [Interval(Integral, 1, None, closed="left")],
        "dtype": [StrOptions({"float32", "float64"})],
        "device": [str],
        "verbose": ["verbose"],
    }

    def __init__(
        self,
        model="sentence-transformers/all-MiniLM-L6-v2",
        *,
        tokenizer=None,
        layer=-1,
        special_tokens="drop",
        max_tokens=None,
        batch_size=32,
        dtype="float32",
        device="cpu",
        verbose=0,
    ):
        self.model = model
        self.tokenizer = tokenizer
        self.layer = layer
        self.special_tokens = special_tokens
        self.max_tokens = max_tokens
        self.batch_size = batch_size
        self.dtype = dtype
        self.device = device
        self.verbose = verbose

    # -- scikit-learn protocol -----------------------------------------------------------
    @_fit_context(prefer_skip_nested_validation=True)
    def fit(self, X=None, y=None):
        """Check the parameters; the encoder is frozen, so nothing is learnt.

        Parameters
        ----------
        X : list of str, default=None
            Ignored.
        y : None
            Ignored.

        Returns
        -------
        self : HFTokenEncoder
        """
        return self

    def __sklearn_is_fitted__(self):
        return True  # stateless: transform works without fit

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.requires_fit = False
        tags.input_tags.two_d_array = False
        tags.input_tags.string = True
        tags.non_deterministic = False
        return tags

    def __getstate__(self):
        state = super().__getstate__()
        # model_ and tokenizer_ are caches: a loaded model or tokenizer given as a
        # parameter is pickled as that parameter, one given by name is reloaded
        for key in ("model_", "tokenizer_", "_loaded_key", "_tok_key"):
            state.pop(key, None)
        return state

    # -- loading --------------------------------------------------------------------------
    def _resolve_device(self, torch):
        dev = self.device
        if dev == "auto":
            return "cuda" if torch.cuda.is_available() else "cpu"
        if dev.startswith("cuda") and not torch.cuda.is_available():
            raise ValueError(
                f"device={dev!r} but torch.cuda.is_available() is False (a CPU-only torch, "
                "or no GPU visible); use device='cpu' or device='auto'."
            )
        try:
            return str(torch.device(dev))
        except RuntimeError as exc:
            raise ValueError(
                f"device={dev!r} is not a torch device; use 'cpu', 'cuda', 'cuda:N' or "
                "'auto'."
            ) from exc

    def _load_tokenizer(self):
        _, transformers = _import_hf()
        key = ("tok", _key_of(self.tokenizer), _key_of(self.model))
        if getattr(self, "_tok_key", None) == key and hasattr(self, "tokenizer_"):
            return self.tokenizer_
        tok = self.tokenizer
        if tok is None:
            if _is_loaded(self.model):
                raise ValueError(
                    "model is a loaded transformers model but tokenizer=None; pass its "
                    "tokenizer too, e.g. tokenizer=AutoTokenizer.from_pretrained(name)."
                )
            tok = self.model
        if isinstance(tok, (str, bytes)) or hasattr(tok, "__fspath__"):
            with _quiet_loading(transformers, self.verbose):
                tok = transformers.AutoTokenizer.from_pretrained(str(tok))
        if not callable(tok) or not hasattr(tok, "convert_ids_to_tokens"):
            raise ValueError(
                f"tokenizer is a {type(tok).__name__}, not a transformers tokenizer; pass a "
                "tokenizer object, a model name or a local path."
            )
        self.tokenizer_ = tok
        self._tok_key = key
        return tok

    def _load_model(self):
        torch, transformers = _import_hf()
        device = self._resolve_device(torch)
        key = ("model", _key_of(self.model), device)
        if getattr(self, "_loaded_key", None) == key and hasattr(self, "model_"):
            return self.model_, device
        model = self.model
        if isinstance(model, (str, bytes)) or hasattr(model, "__fspath__"):
            with _quiet_loading(transformers, self.verbose):
                model = transformers.AutoModel.from_pretrained(str(model))
        elif not isinstance(model, torch.nn.Module):
            raise ValueError(
                f"model is a {type(model).__name__}; pass a model name, a local directory "
                "or a loaded transformers model (a torch.nn.Module)."
            )
        model = model.to(device)
        model.eval()
        self.model_ = model
        self._loaded_key = key
        return model, device

    def _check_layer(self, model):
        n_layers = getattr(model.config, "num_hidden_layers", None)
        if n_layers is None:
            return self.layer
        n_states = int(n_layers) + 1
        if not -n_states <= self.layer < n_states:
            raise ValueError(
                f"layer={self.layer} is out of range: the model has {n_layers} layers, so "
                f"hidden_states has {n_states} entries (0 = embeddings, {n_layers} or -1 = "
                f"last layer). Pass a layer in [{-n_states}, {n_states - 1}]."
            )
        return self.layer % n_states

    def _max_length(self, tok, model=None):
        """Tokens the tokenizer may produce per text (special tokens included)."""
        limits = []
        mml = getattr(tok, "model_max_length", None)
        if mml is not None and 0 < mml < 1_000_000:
            limits.append(int(mml))
        if model is not None:
            mpe = getattr(model.config, "max_position_embeddings", None)
            if mpe is not None:
                limits.append(int(mpe))
        if self.max_tokens is not None:
            extra = tok.num_special_tokens_to_add() if self.special_tokens == "drop" else 0
            limits.append(int(self.max_tokens) + int(extra))
        return min(limits) if limits else None

    def _tokenize(self, tok, texts, max_length, **kwargs):
        return tok(
            texts,
            truncation=max_length is not None,
            max_length=max_length,
            return_special_tokens_mask=True,
            **kwargs,
        )

    def _kept(self, attention, special):
        """Which positions become token rows (arrays of 0/1 of the same shape)."""
        keep = np.asarray(attention, dtype=bool)
        if self.special_tokens == "drop":
            keep = keep & ~np.asarray(special, dtype=bool)
        return keep

    # -- public ---------------------------------------------------------------------------
    def get_tokens(self, X):
        """The token strings of each text, as the rows of :meth:`transform` hold them.

        Parameters
        ----------
        X : list of str
            The texts.

        Returns
        -------
        tokens : list of list of str
            For every text, the kept tokens (word pieces, in order, truncated to
            ``max_tokens``): ``tokens[i][j]`` is the string of row ``j`` of sample ``i``.
            Padding rows have no string.
        """
        self._validate_params()
        texts = _check_texts(X)
        tok = self._load_tokenizer()
        enc = self._tokenize(tok, texts, self._max_length(tok))
        out = []
        for ids, special in zip(enc["input_ids"], enc["special_tokens_mask"]):
            keep = self._kept(np.ones(len(ids), dtype=bool), special)
            pieces = tok.convert_ids_to_tokens(list(ids))
            out.append([p for p, k in zip(pieces, keep) if k][: self.max_tokens])
        return out

    def transform(self, X):
        """Encode texts into a NaN-padded token array.

        Parameters
        ----------
        X : list of str
            The texts, one per sample.

        Returns
        -------
        X_tokens : ndarray of shape (n_samples, n_tokens, hidden_size)
            The hidden states of ``layer`` at the kept tokens, in order; rows past a
            text's last token are NaN (padding). ``n_tokens`` is ``max_tokens``, or the
            longest text when ``max_tokens=None``.
        """
        self._validate_params()
        texts = _check_texts(X)
        torch, _ = _import_hf()
        tok = self._load_tokenizer()
        model, device = self._load_model()
        layer = self._check_layer(model)
        max_length = self._max_length(tok, model)

        # lengths first (cheap): checks every text before the forward passes
        enc = self._tokenize(tok, texts, max_length)
        lengths = np.array(
            [int(self._kept(np.ones(len(m), dtype=bool), m).sum())
             for m in enc["special_tokens_mask"]]
        )
        if self.max_tokens is not None:
            lengths = np.minimum(lengths, self.max_tokens)
        empty = np.flatnonzero(lengths == 0)
        if empty.size:
            raise ValueError(
                f"text {int(empty[0])} ({texts[empty[0]]!r}) has no tokens"
                + (" once special tokens are dropped" if self.special_tokens == "drop" else "")
                + f" ({empty.size} such texts); every sample needs at least one token. "
                "Remove empty texts, or pass special_tokens='keep'."
            )
        n_tokens = int(self.max_tokens) if self.max_tokens is not None else int(lengths.max())

        order = np.argsort(-lengths, kind="stable")  # similar lengths share a batch
        batches = [order[i: i + self.batch_size] for i in range(0, len(texts), self.batch_size)]
        if self.verbose:
            from tqdm.auto import tqdm

            batches = tqdm(batches, desc="encoding", unit="batch")
        out = None
        with torch.inference_mode():
            for idx in batches:
                inputs = self._tokenize(
                    tok, [texts[i] for i in idx], max_length, padding=True, return_tensors="pt"
                )
                special = inputs.pop("special_tokens_mask").numpy()
                keep = self._kept(inputs["attention_mask"].numpy(), special)
                inputs = {k: v.to(device) for k, v in inputs.items()}
                states = model(**inputs, output_hidden_states=True).hidden_states[layer]
                states = states.float().cpu().numpy() if self.dtype == "float32" else (
                    states.double().cpu().numpy())
                if out is None:  # the width is the model's hidden size
                    out = np.full((len(texts), n_tokens, states.shape[2]), np.nan,
                                  dtype=self.dtype)
                # row j of sample b is the j-th kept position (vectorised gather)
                pos = np.cumsum(keep, axis=1) - 1
                rows, cols = np.nonzero(keep & (pos < n_tokens))
                out[idx[rows], pos[rows, cols]] = states[rows, cols]
        return out


@contextlib.contextmanager
def _quiet_loading(transformers, verbose):
    """transformers' own progress bars (loading weights) only when ``verbose``."""
    hf_logging = getattr(getattr(transformers, "utils", None), "logging", None)
    switch = all(
        hasattr(hf_logging, f)
        for f in ("is_progress_bar_enabled", "disable_progress_bar", "enable_progress_bar")
    )
    if verbose or not switch or not hf_logging.is_progress_bar_enabled():
        yield
        return
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        hf_logging.enable_progress_bar()


def _is_loaded(obj):
    return obj is not None and not isinstance(obj, (str, bytes)) and not hasattr(
        obj, "__fspath__"
    )


def _key_of(obj):
    return ("id", id(obj)) if _is_loaded(obj) else ("name", None if obj is None else str(obj))
