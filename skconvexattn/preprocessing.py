"""Token-wise preprocessing: scaling and PCA fitted over all tokens of the training set.

Both transformers treat every token of every training sample as one observation of the
same ``n_features``-dimensional distribution: they fit on ``X.reshape(n * s, d)`` and
apply the same map to every token. They accept token matrices of shape
``(n_samples, n_tokens, n_features)`` or their 2-D flattening
``(n_samples, n_tokens * n_features)`` (with the constructor parameter ``n_tokens``), and
return the same dimensionality as their input: 3-D in, 3-D out; 2-D in, flattened 2-D out.
A transformer fitted on 3-D data accepts the same data flattened, and the reverse.

Use them before the heads, e.g. ``make_pipeline(TokenStandardScaler(), TokenPCA(16),
head)`` with ``head`` the self-attention head: its lifted features grow as
``n_features**3``, so a token PCA bringing large backbone features down to 16-64
dimensions is usually needed (as in Sahiner et al., 2022).

Padding tokens (token rows entirely NaN, see :func:`padding_mask` and :func:`pad_tokens`)
are left out of the statistics and stay NaN in the output, so padded sequences pass
through a pipeline of these transformers to a head unchanged in their padding.
"""

from __future__ import annotations

from numbers import Integral

import numpy as np
from sklearn.base import (
    BaseEstimator,
    OneToOneFeatureMixin,
    TransformerMixin,
    _fit_context,
)
from sklearn.decomposition import PCA
from sklearn.preprocessing import StandardScaler
from sklearn.utils import check_array
from sklearn.utils._param_validation import Interval, RealNotInt, StrOptions
from sklearn.utils._set_output import _get_output_config
from sklearn.utils.validation import (
    _check_feature_names_in,
    _check_sample_weight,
    check_is_fitted,
)

from ._dask import is_dask_array
from ._padding import pad_tokens, padding_mask
from ._validation import check_tokens

__all__ = ["TokenStandardScaler", "TokenPCA", "pad_tokens", "padding_mask"]

_FLOATS = [np.float64, np.float32]


def _input_ndim(X):
    """Dimensionality of the input as given (before validation); 2-D in gives 2-D out."""
    ndim = getattr(X, "ndim", None)
    if ndim is None:
        try:
            ndim = np.asarray(X).ndim
        except ValueError:  # ragged: check_tokens raises the clear error
            ndim = -1
    return ndim


def _check_container_output(estimator, ndim):
    """A 3-D output cannot become a DataFrame: say so before set_output tries."""
    if ndim == 3 and _get_output_config("transform", estimator)["dense"] != "default":
        raise ValueError(
            f"{type(estimator).__name__} returns 3-D output for 3-D X, which cannot be "
            "wrapped in a DataFrame as set_output(transform=...) requests. Pass X "
            "flattened to (n_samples, n_tokens * n_features) with n_tokens set at fit, or "
            "use set_output(transform='default')."
        )


def _stack(X3):
    """``(n, s, d)`` -> ``(n * s, d)``: every token one row (a view when contiguous)."""
    n, s, d = X3.shape
    return X3.reshape(n * s, d)


def _real_rows(T):
    """Rows of the stacked tokens ``T`` that are not padding (not entirely NaN), or None
    when there is no padding (every row is real)."""
    real = ~np.isnan(T[:, 0])
    return None if real.all() else real


def _map_real(func, T, n_out):
    """Apply ``func`` to the real rows of the stacked tokens ``T``; padding rows of the
    result (``n_out`` columns) are NaN."""
    real = _real_rows(T)
    if real is None:
        return func(T)
    out = func(T[real])
    full = np.full((T.shape[0], n_out), np.nan, dtype=out.dtype)
    full[real] = out
    return full


def _unstack(T, n, s, ndim):
    """Stacked tokens ``(n * s, k)`` back to ``(n, s, k)``, or ``(n, s * k)`` if ``ndim == 2``."""
    k = T.shape[1]
    return T.reshape(n, s, k) if ndim == 3 else T.reshape(n, s * k)


def _check_inverse_input(estimator, X, n_out):
    """Validate the input of ``inverse_transform``: tokens of ``n_out`` features each.

    Returns ``(X3, ndim)`` with ``X3`` of shape ``(n, n_tokens, n_out)``.
    """
    s = estimator.token_shape_[0]
    ndim = _input_ndim(X)
    if ndim not in (2, 3):
        raise ValueError(
            f"X must be 3-D (n_samples, n_tokens, n_components) or its 2-D flattening; "
            f"got a {ndim}-D input. Pass the output of transform."
        )
    X = check_array(
        X,
        allow_nd=True,
        dtype=_FLOATS,
        ensure_all_finite="allow-nan",  # padding tokens stay NaN
        input_name="X",
        estimator=estimator,
    )
    if ndim == 3 and X.shape[1:] != (s, n_out):
        raise ValueError(
            f"X has tokens of shape {X.shape[1:]}, but {type(estimator).__name__}."
            f"inverse_transform expects ({s}, {n_out}) (n_tokens, transformed features per "
            "token). Pass the output of transform."
        )
    if ndim == 2 and X.shape[1] != s * n_out:
        raise ValueError(
            f"X has {X.shape[1]} columns, but {type(estimator).__name__}.inverse_transform "
            f"expects n_tokens * n_features = {s} * {n_out} = {s * n_out} (the flattened "
            "output of transform). Pass the output of transform."
        )
    return X.reshape(X.shape[0], s, n_out), ndim


class TokenStandardScaler(OneToOneFeatureMixin, TransformerMixin, BaseEstimator):
    """Standardise token features with statistics pooled over all training tokens.

    Every real token of every sample is one observation: the mean and standard deviation
    of each of the ``n_features`` token features are computed over the ``n_samples *
    n_tokens`` tokens of the training set, padding tokens (rows entirely NaN) left out (the same as
    :class:`~sklearn.preprocessing.StandardScaler` on ``X.reshape(-1, n_features)``,
    which this class uses internally), and every token is then transformed as
    ``(x - mean_) / scale_``. All tokens share one map, so the token structure
    (which tokens are similar) is preserved.

    Parameters
    ----------
    copy : bool, default=True
        If False, try to scale in place (only when the input is already a float NumPy
        array of a supported dtype).
    with_mean : bool, default=True
        Centre each token feature on its mean over all training tokens.
    with_std : bool, default=True
        Scale each token feature to unit variance over all training tokens. Features
        with zero variance are left unscaled (``scale_ = 1``).
    n_tokens : int, default=None
        Tokens per row when ``X`` is given flattened as
        ``(n_samples, n_tokens * n_features)``; ``None`` means one token per row (then
        this is exactly :class:`~sklearn.preprocessing.StandardScaler`).

    Attributes
    ----------
    mean_ : ndarray of shape (n_features,) or None
        Mean of every token feature over the training tokens; None if
        ``with_mean=False`` and ``with_std=False`` (as in ``StandardScaler``).
    var_ : ndarray of shape (n_features,) or None
        Variance of every token feature over the training tokens; None if
        ``with_mean=False`` and ``with_std=False``.
    scale_ : ndarray of shape (n_features,) or None
        Per-feature scaling, ``sqrt(var_)`` (1 where the variance is 0); None if
        ``with_std=False``.
    n_tokens_seen_ : int or float
        Number of real training tokens (``n_samples * n_tokens`` without padding), or
        their total weight when ``sample_weight`` is given.
    token_shape_ : tuple of int
        ``(n_tokens, n_features)`` seen at fit.
    n_features_in_ : int
        Flattened width ``n_tokens * n_features``.
    feature_names_in_ : ndarray of shape (n_features_in,)
        Names of the columns of a 2-D ``X`` given as a DataFrame with string column
        names.

    See Also
    --------
    TokenPCA : Principal components of the token features.
    sklearn.preprocessing.StandardScaler : The same on one observation per row.

    Examples
    --------
    >>> import numpy as np
    >>> from skconvexattn.preprocessing import TokenStandardScaler
    >>> X = np.arange(24, dtype=float).reshape(2, 3, 4)
    >>> Xt = TokenStandardScaler().fit_transform(X)
    >>> Xt.shape
    (2, 3, 4)
    >>> np.allclose(Xt.reshape(-1, 4).mean(axis=0), 0)
    True
    """

    _parameter_constraints: dict = {
        "copy": ["boolean"],
        "with_mean": ["boolean"],
        "with_std": ["boolean"],
        "n_tokens": [Interval(Integral, 1, None, closed="left"), None],
    }

    def __init__(self, *, copy=True, with_mean=True, with_std=True, n_tokens=None):
        self.copy = copy
        self.with_mean = with_mean
        self.with_std = with_std
        self.n_tokens = n_tokens

    @_fit_context(prefer_skip_nested_validation=True)
    def fit(self, X, y=None, sample_weight=None):
        """Compute the token-feature mean and scale over all training tokens.

        Parameters
        ----------
        X : array-like of shape (n_samples, n_tokens, n_features) or \
                (n_samples, n_tokens * n_features)
            Token features; a 2-D ``X`` is cut into ``n_tokens`` tokens per row.
        y : None
            Ignored.
        sample_weight : array-like of shape (n_samples,), default=None
            Weight of each sample; all tokens of a sample share its weight.

        Returns
        -------
        self : object
            The fitted scaler.
        """
        if is_dask_array(X):  # statistics by reductions over the chunks
            from ._dask import fit_token_scaler

            return fit_token_scaler(self, X, sample_weight)
        X3 = check_tokens(self, X, reset=True, n_tokens=self.n_tokens)
        n, s, d = X3.shape
        if sample_weight is not None:
            sample_weight = _check_sample_weight(sample_weight, X3, dtype=X3.dtype)
            sample_weight = np.repeat(sample_weight, s)
        T = _stack(X3)
        real = _real_rows(T)
        if real is not None:  # padding tokens are no observations
            T = T[real]
            sample_weight = None if sample_weight is None else sample_weight[real]
        self.scaler_ = StandardScaler(
            copy=True, with_mean=self.with_mean, with_std=self.with_std
        ).set_output(transform="default")
        self.scaler_.fit(T, sample_weight=sample_weight)
        self.mean_ = self.scaler_.mean_
        self.var_ = self.scaler_.var_
        self.scale_ = self.scaler_.scale_
        self.n_tokens_seen_ = self.scaler_.n_samples_seen_
        return self

    def transform(self, X, copy=None):
        """Standardise every token.

        Parameters
        ----------
        X : array-like of shape (n_samples, n_tokens, n_features) or \
                (n_samples, n_tokens * n_features)
            Token features with the token shape seen at fit.
        copy : bool, default=None
            Copy the input X or not; ``None`` uses the ``copy`` parameter.

        Returns
        -------
        X_tr : ndarray of the same shape and dtype as X
            The standardised tokens.
        """
        check_is_fitted(self)
        if is_dask_array(X):  # lazy, chunk by chunk
            from ._dask import lazy_transform

            _check_container_output(self, X.ndim)
            return lazy_transform(self, X, self.token_shape_[1])
        ndim = _input_ndim(X)
        X3 = check_tokens(self, X, reset=False)
        _check_container_output(self, ndim)
        n, s, _ = X3.shape
        copy = self.copy if copy is None else copy
        T = self.scaler_.transform(_stack(X3), copy=copy)
        return _unstack(T, n, s, ndim)

    def inverse_transform(self, X, copy=None):
        """Undo the standardisation: ``x * scale_ + mean_`` for every token.

        Parameters
        ----------
        X : array-like of shape (n_samples, n_tokens, n_features) or \
                (n_samples, n_tokens * n_features)
            Standardised tokens.
        copy : bool, default=None
            Copy the input X or not; ``None`` uses the ``copy`` parameter.

        Returns
        -------
        X_original : ndarray of the same shape and dtype as X
            Tokens in the original feature scale.
        """
        check_is_fitted(self)
        s, d = self.token_shape_
        X3, ndim = _check_inverse_input(self, X, d)
        copy = self.copy if copy is None else copy
        T = self.scaler_.inverse_transform(_stack(X3), copy=copy)
        return _unstack(T, X3.shape[0], s, ndim)

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.input_tags.three_d_array = True
        tags.transformer_tags.preserves_dtype = ["float64", "float32"]
        return tags


class TokenPCA(TransformerMixin, BaseEstimator):
    """Principal component analysis of token features, fitted over all training tokens.

    Every real token of every sample is one observation: a
    :class:`~sklearn.decomposition.PCA` is fitted on the ``n_samples * n_tokens`` tokens
    stacked as rows (``X.reshape(-1, n_features)``, padding tokens, rows entirely NaN,
    left out), and every token is projected onto the same ``n_components`` principal
    axes; padding tokens stay NaN. This reduces the features per token (the
    dimension ``d`` that the convex heads' cost depends on) without mixing tokens.

    Parameters
    ----------
    n_components : int, float or None, default=None
        Number of components kept per token.

        - int: keep that many components, ``1 <= n_components <= n_features`` (and at
          most the number of training tokens);
        - float in (0, 1): keep the smallest number of components whose explained
          variance ratio exceeds it;
        - None: keep all ``min(n_features, n_samples * n_tokens)`` components.
    whiten : bool, default=False
        Scale the projected tokens to unit variance over the training tokens.
    svd_solver : {"auto", "full", "covariance_eigh", "arpack", "randomized"}, \
            default="auto"
        Passed to :class:`~sklearn.decomposition.PCA`.
    random_state : int, RandomState instance or None, default=None
        Used by the ``"arpack"`` and ``"randomized"`` solvers. Pass an int for
        reproducible results.
    n_tokens : int, default=None
        Tokens per row when ``X`` is given flattened as
        ``(n_samples, n_tokens * n_features)``; ``None`` means one token per row (then
        this is exactly :class:`~sklearn.decomposition.PCA`).

    Attributes
    ----------
    pca_ : sklearn.decomposition.PCA
        The PCA fitted on the stacked training tokens.
    components_ : ndarray of shape (n_components, n_features)
        Principal axes in token-feature space.
    explained_variance_ : ndarray of shape (n_components,)
        Variance of the training tokens along each axis.
    explained_variance_ratio_ : ndarray of shape (n_components,)
        Fraction of the total token variance explained by each axis.
    singular_values_ : ndarray of shape (n_components,)
        Singular values of the centred stacked tokens.
    mean_ : ndarray of shape (n_features,)
        Mean token over all training tokens.
    n_components_ : int
        Number of components kept per token.
    noise_variance_ : float
        Probabilistic-PCA noise variance (see :class:`~sklearn.decomposition.PCA`).
    token_shape_ : tuple of int
        ``(n_tokens, n_features)`` seen at fit.
    n_features_in_ : int
        Flattened input width ``n_tokens * n_features``.
    feature_names_in_ : ndarray of shape (n_features_in,)
        Names of the columns of a 2-D ``X`` given as a DataFrame with string column
        names.

    See Also
    --------
    TokenStandardScaler : Standardise token features first.
    sklearn.decomposition.PCA : The same on one observation per row.

    Examples
    --------
    >>> import numpy as np
    >>> from skconvexattn.preprocessing import TokenPCA
    >>> X = np.random.RandomState(0).randn(10, 5, 8)
    >>> pca = TokenPCA(n_components=3).fit(X)
    >>> pca.transform(X).shape
    (10, 5, 3)
    >>> pca.transform(X.reshape(10, 40)).shape
    (10, 15)
    """

    _parameter_constraints: dict = {
        "n_components": [
            Interval(Integral, 1, None, closed="left"),
            Interval(RealNotInt, 0, 1, closed="neither"),
            None,
        ],
        "whiten": ["boolean"],
        "svd_solver": [
            StrOptions({"auto", "full", "covariance_eigh", "arpack", "randomized"})
        ],
        "random_state": ["random_state"],
        "n_tokens": [Interval(Integral, 1, None, closed="left"), None],
    }

    def __init__(
        self,
        n_components=None,
        *,
        whiten=False,
        svd_solver="auto",
        random_state=None,
        n_tokens=None,
    ):
        self.n_components = n_components
        self.whiten = whiten
        self.svd_solver = svd_solver
        self.random_state = random_state
        self.n_tokens = n_tokens

    @_fit_context(prefer_skip_nested_validation=True)
    def fit(self, X, y=None):
        """Fit the principal axes on all training tokens.

        Parameters
        ----------
        X : array-like of shape (n_samples, n_tokens, n_features) or \
                (n_samples, n_tokens * n_features)
            Token features; a 2-D ``X`` is cut into ``n_tokens`` tokens per row.
        y : None
            Ignored.

        Returns
        -------
        self : object
            The fitted transformer.
        """
        if is_dask_array(X):  # mean and covariance by a reduction over the chunks
            from ._dask import fit_token_pca

            return fit_token_pca(self, X)
        X3 = check_tokens(self, X, reset=True, n_tokens=self.n_tokens)
        n, s, d = X3.shape
        T = _stack(X3)
        real = _real_rows(T)
        if real is not None:  # padding tokens are no observations
            T = T[real]
        n_real = T.shape[0]
        self._check_components(n, s, d, n_real)
        k = self.n_components
        self.pca_ = PCA(
            n_components=k,
            whiten=self.whiten,
            svd_solver=self.svd_solver,
            random_state=self.random_state,
        ).set_output(transform="default")
        self.pca_.fit(T)
        for name in (
            "components_",
            "explained_variance_",
            "explained_variance_ratio_",
            "singular_values_",
            "mean_",
            "n_components_",
            "noise_variance_",
        ):
            setattr(self, name, getattr(self.pca_, name))
        return self

    def _check_components(self, n, s, d, n_real):
        """``n_components`` against the token shape and the ``n_real`` real tokens."""
        k = self.n_components
        if isinstance(k, Integral):
            if k > d:
                raise ValueError(
                    f"n_components={k} is larger than the number of features per token, "
                    f"n_features={d} (X has token shape (n_tokens, n_features)={(s, d)}); "
                    "TokenPCA reduces the features of each token. Use n_components <= "
                    f"{d}, a float in (0, 1) to keep a fraction of the variance, or None "
                    "to keep all components."
                )
            if k > n_real:
                raise ValueError(
                    f"n_components={k} is larger than the number of training tokens, "
                    f"{n_real} (the real tokens among n_samples * n_tokens = {n} * {s}; "
                    f"padding tokens do not count). Use n_components <= {n_real}, or fit "
                    "on more data."
                )
            if self.svd_solver == "arpack" and k >= min(d, n_real):
                raise ValueError(
                    f"n_components={k} must be strictly less than min(n_features, "
                    f"number of real training tokens) = {min(d, n_real)} with "
                    "svd_solver='arpack'. Use a smaller n_components or svd_solver='full'."
                )

    def transform(self, X):
        """Project every token onto the principal axes.

        Parameters
        ----------
        X : array-like of shape (n_samples, n_tokens, n_features) or \
                (n_samples, n_tokens * n_features)
            Token features with the token shape seen at fit.

        Returns
        -------
        X_new : ndarray of shape (n_samples, n_tokens, n_components) or \
                (n_samples, n_tokens * n_components)
            The projected tokens, with the dimensionality and dtype of ``X``.
        """
        check_is_fitted(self)
        if is_dask_array(X):  # lazy, chunk by chunk
            from ._dask import lazy_transform

            _check_container_output(self, X.ndim)
            return lazy_transform(self, X, self.n_components_)
        ndim = _input_ndim(X)
        X3 = check_tokens(self, X, reset=False)
        _check_container_output(self, ndim)
        n, s, _ = X3.shape
        T = _map_real(self.pca_.transform, _stack(X3), self.n_components_)
        return _unstack(T, n, s, ndim)

    def inverse_transform(self, X):
        """Map projected tokens back to token-feature space.

        Exact (up to rounding) when all components are kept and ``whiten=False`` or
        not; otherwise the reconstruction from the kept components.

        Parameters
        ----------
        X : array-like of shape (n_samples, n_tokens, n_components) or \
                (n_samples, n_tokens * n_components)
            Projected tokens.

        Returns
        -------
        X_original : ndarray of shape (n_samples, n_tokens, n_features) or \
                (n_samples, n_tokens * n_features)
            Reconstructed tokens, with the dimensionality of ``X``.
        """
        check_is_fitted(self)
        s, _ = self.token_shape_
        X3, ndim = _check_inverse_input(self, X, self.n_components_)
        T = _map_real(self.pca_.inverse_transform, _stack(X3), self.token_shape_[1])
        return _unstack(T, X3.shape[0], s, ndim)

    def get_feature_names_out(self, input_features=None):
        """Names of the flattened output columns.

        ``tokenpca<j>`` for one token per row (as :class:`~sklearn.decomposition.PCA`),
        otherwise ``token<t>_tokenpca<j>`` in the row-major order of the flattened
        ``(n_tokens, n_components_)`` output.

        Parameters
        ----------
        input_features : array-like of str or None, default=None
            Only used to validate against ``feature_names_in_``.

        Returns
        -------
        feature_names_out : ndarray of str objects
        """
        check_is_fitted(self, "n_components_")
        _check_feature_names_in(self, input_features, generate_names=False)
        s = self.token_shape_[0]
        k = self.n_components_
        if s == 1:
            names = [f"tokenpca{j}" for j in range(k)]
        else:
            names = [f"token{t}_tokenpca{j}" for t in range(s) for j in range(k)]
        return np.asarray(names, dtype=object)

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.input_tags.three_d_array = True
        tags.transformer_tags.preserves_dtype = ["float64", "float32"]
        return tags
