"""Item-based models: a user's score for an item sums that item's similarity to their history."""

from __future__ import annotations

import warnings
from typing import ClassVar, Literal, Self

import numpy as np
import scipy.sparse as sp
from scipy.linalg import lapack

from recsvc.models.base import Recommender, check_user_items, csr_rows, top_k


class ItemBasedRecommender(Recommender):
    """Scores users' histories against an item-item matrix (sparse for kNN, dense for EASE).

    With `repeat_weight` > 0 the user's own history joins the neighbours' evidence, as in
    TIFU-kNN (Hu et al. 2020): each item the user touched gains up to `repeat_weight` times the
    user's best neighbour score, in proportion to its confidence (which the signals already
    decay with the user's later moments). Where users come back to what they know (repeat
    purchases, buying what they viewed) that personal frequency is the strongest signal; the
    item-item matrix alone scores an item from its neighbours only (EASE's diagonal is zero).
    """

    repeat_weight: float
    user_items_data: np.ndarray
    user_items_indices: np.ndarray
    user_items_indptr: np.ndarray

    def _keep_history(self, matrix: sp.csr_matrix) -> None:
        self.user_items_data = matrix.data.astype(np.float32)
        self.user_items_indices = matrix.indices.astype(np.int32)
        self.user_items_indptr = matrix.indptr.astype(np.int64)

    def history(self, users: np.ndarray) -> sp.csr_matrix:
        return csr_rows(
            self.user_items_data,
            self.user_items_indices,
            self.user_items_indptr,
            users,
            self.n_items,
        )

    def item_rows(self, items: np.ndarray) -> sp.csr_matrix | np.ndarray:
        """Rows `items` of the item-item matrix."""
        raise NotImplementedError

    def score(self, users: np.ndarray) -> np.ndarray:
        users = np.asarray(users, dtype=np.int64)
        if users.size == 1:  # the serving path: plain numpy, no sparse-matrix construction
            start, end = self.user_items_indptr[users[0]], self.user_items_indptr[users[0] + 1]
            items = np.asarray(self.user_items_indices[start:end], dtype=np.int64)
            weights = np.asarray(self.user_items_data[start:end], dtype=np.float32)
            return self.score_items(items, weights)[None, :]
        return self.score_history(self.history(users))

    def score_items(self, items: np.ndarray, weights: np.ndarray) -> np.ndarray:
        """One user's scores from their items and confidences."""
        scores = self._score_items(items, weights)
        if self.repeat_weight > 0 and items.size:
            unit = self._repeat_units(scores.max(keepdims=True), weights.max(keepdims=True))
            scores[items] += unit * weights
        return scores

    def score_history(self, history: sp.csr_matrix) -> np.ndarray:
        if not (sp.isspmatrix_csr(history) and history.dtype == np.float32):
            history = sp.csr_matrix(history, dtype=np.float32)
        scores = self._score_history(history)
        lengths = np.diff(history.indptr)
        rows = np.flatnonzero(lengths)
        if self.repeat_weight > 0 and rows.size:
            # Each non-empty row's strongest confidence: its segment of the data runs to the
            # next non-empty row's start, the empty rows between holding nothing.
            strongest = np.maximum.reduceat(history.data, history.indptr[rows])
            units = np.zeros(lengths.size, dtype=np.float32)
            units[rows] = self._repeat_units(scores[rows].max(axis=1), strongest)
            owners = np.repeat(np.arange(lengths.size), lengths)
            scores[owners, history.indices] += units[owners] * history.data
        return scores

    def _repeat_units(self, best: np.ndarray, strongest: np.ndarray) -> np.ndarray:
        """What a unit of confidence adds to its own item, per user: repeat_weight of their
        best score (1 where none is positive) per their strongest confidence, so the lift
        keeps its size whatever the scale of either."""
        best = np.maximum(np.asarray(best, dtype=np.float64), 0.0)
        best[best == 0] = 1.0
        return (self.repeat_weight * best / strongest).astype(np.float32)

    def _score_items(self, items: np.ndarray, weights: np.ndarray) -> np.ndarray:
        """The neighbours' scores for one user's items and confidences."""
        return self._score_history(
            sp.csr_matrix((weights, items, [0, items.size]), shape=(1, self.n_items))
        )[0]

    def _score_history(self, history: sp.csr_matrix) -> np.ndarray:
        """The neighbours' scores for history rows (float32 CSR)."""
        if history.shape[0] == 1:
            # One user (the serving path): their items' rows, weighted. Slicing the history's
            # columns would cost more than the product.
            rows = self.item_rows(np.asarray(history.indices, dtype=np.int64))
            return np.asarray(rows.T @ history.data, dtype=np.float32)[None, :]
        # Only items in these users' histories contribute: multiply just those rows.
        seen = np.unique(history.indices)
        product = history[:, seen] @ self.item_rows(seen)
        dense = product.toarray() if sp.issparse(product) else np.asarray(product)
        return dense.astype(np.float32)

    def item_columns(self, items: np.ndarray) -> sp.csr_matrix | np.ndarray:
        """Columns `items` of the item-item matrix (what each item contributes to them)."""
        raise NotImplementedError

    def user_affinity(self, items: np.ndarray, n_users: int) -> np.ndarray:
        history = self.history(np.arange(n_users))
        product = history @ self.item_columns(np.asarray(items, dtype=np.int64))
        dense = product.toarray() if sp.issparse(product) else np.asarray(product)
        return dense.mean(axis=1).astype(np.float32)

    def similar_items(self, items: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        items = np.asarray(items, dtype=np.int64)
        rows = self.item_rows(items)
        scores = (rows.toarray() if sp.issparse(rows) else np.array(rows)).astype(np.float32)
        scores[scores == 0] = -np.inf  # no evidence of similarity at all
        scores[np.arange(items.size), items] = -np.inf
        return top_k(scores, k)


class SparseItemGraphRecommender(ItemBasedRecommender):
    """An item-based model whose item-item matrix is sparse (each item's top neighbours)."""

    similarity_data: np.ndarray
    similarity_indices: np.ndarray
    similarity_indptr: np.ndarray

    @property
    def n_items(self) -> int:
        return int(self.similarity_indptr.size - 1)

    def _keep_similarity(self, similarity: sp.csr_matrix) -> None:
        similarity = sp.csr_matrix(similarity, dtype=np.float32)
        similarity.sort_indices()
        self.similarity_data = similarity.data
        self.similarity_indices = similarity.indices.astype(np.int32)
        self.similarity_indptr = similarity.indptr.astype(np.int64)

    def _score_items(self, items: np.ndarray, weights: np.ndarray) -> np.ndarray:
        starts = np.asarray(self.similarity_indptr[items], dtype=np.int64)
        lengths = np.asarray(self.similarity_indptr[items + 1], dtype=np.int64) - starts
        take = np.repeat(starts - np.cumsum(np.r_[0, lengths[:-1]]), lengths) + np.arange(
            lengths.sum()
        )
        contribution = self.similarity_data[take] * np.repeat(weights, lengths)
        return np.bincount(
            self.similarity_indices[take], weights=contribution, minlength=self.n_items
        ).astype(np.float32)

    def item_rows(self, items: np.ndarray) -> sp.csr_matrix:
        return csr_rows(
            self.similarity_data,
            self.similarity_indices,
            self.similarity_indptr,
            items,
            self.n_items,
        )

    def item_columns(self, items: np.ndarray) -> sp.csr_matrix:
        return self.item_rows(np.arange(self.n_items)).tocsc()[:, items]


class ItemKNNRecommender(SparseItemGraphRecommender):
    """Item-item k-nearest neighbours via `implicit` (cosine or BM25-weighted similarity)."""

    model_type: ClassVar[str] = "itemknn"
    array_names: ClassVar[tuple[str, ...]] = (
        "similarity_data",
        "similarity_indices",
        "similarity_indptr",
        "user_items_data",
        "user_items_indices",
        "user_items_indptr",
    )

    def __init__(
        self,
        neighbours: int = 100,
        weighting: Literal["cosine", "bm25"] = "bm25",
        bm25_k1: float = 1.2,
        bm25_b: float = 0.75,
        repeat_weight: float = 0.0,
    ) -> None:
        self.neighbours = neighbours
        self.weighting = weighting
        self.bm25_k1 = bm25_k1
        self.bm25_b = bm25_b
        self.repeat_weight = repeat_weight

    def fit(self, user_items: sp.csr_matrix) -> Self:
        from implicit.nearest_neighbours import BM25Recommender, CosineRecommender
        from implicit.utils import ParameterWarning

        matrix = check_user_items(user_items)
        if self.weighting == "bm25":
            model = BM25Recommender(
                K=self.neighbours, K1=self.bm25_k1, B=self.bm25_b, num_threads=1
            )
        elif self.weighting == "cosine":
            model = CosineRecommender(K=self.neighbours, num_threads=1)
        else:
            raise ValueError(f"unknown weighting {self.weighting!r}")
        with warnings.catch_warnings():
            # implicit's own BM25 weighting hands its kNN a COO matrix and warns about it.
            warnings.simplefilter("ignore", category=ParameterWarning)
            model.fit(matrix, show_progress=False)
        self._keep_similarity(model.similarity)
        self._keep_history(matrix)
        return self


class RP3BetaRecommender(SparseItemGraphRecommender):
    """RP3beta (Paudel et al. 2016): three-step random walks item -> user -> item on the
    interaction graph, each transition probability raised to `alpha`, and the walk's end item
    divided by its popularity to the power `beta`; each item keeps its `neighbours` strongest.
    Among the strongest simple baselines in reproducibility studies (Dacrema et al. 2019)."""

    model_type: ClassVar[str] = "rp3beta"
    array_names: ClassVar[tuple[str, ...]] = ItemKNNRecommender.array_names
    # Rows of the item-item product computed at once: bounds the dense block's memory.
    BLOCK = 512

    def __init__(
        self,
        neighbours: int = 100,
        alpha: float = 0.6,
        beta: float = 0.4,
        repeat_weight: float = 0.0,
    ) -> None:
        self.neighbours = neighbours
        self.alpha = alpha
        self.beta = beta
        self.repeat_weight = repeat_weight

    def fit(self, user_items: sp.csr_matrix) -> Self:
        matrix = check_user_items(user_items)
        if self.neighbours < 1 or self.alpha <= 0 or self.beta < 0:
            raise ValueError("rp3beta needs neighbours >= 1, alpha > 0 and beta >= 0")
        binary = matrix.copy()
        binary.data[:] = 1.0
        user_to_item = _row_stochastic(binary).power(self.alpha).tocsr()
        item_to_user = _row_stochastic(binary.T.tocsr()).power(self.alpha).tocsr()
        degree = np.asarray(binary.sum(axis=0)).ravel()
        penalty = np.zeros_like(degree, dtype=np.float32)
        penalty[degree > 0] = degree[degree > 0] ** -self.beta
        n_items = matrix.shape[1]
        keep = min(self.neighbours, n_items)
        rows, cols, vals = [], [], []
        for start in range(0, n_items, self.BLOCK):
            block = item_to_user[start : start + self.BLOCK] @ user_to_item
            dense = block.toarray().astype(np.float32) * penalty[None, :]
            # The walk back to the item itself stays: it is what ranks a repeat purchase.
            items = np.arange(start, start + dense.shape[0])
            top = (
                np.argpartition(-dense, keep - 1, axis=1)[:, :keep]
                if keep < n_items
                else (np.broadcast_to(np.arange(n_items), dense.shape))
            )
            values = np.take_along_axis(dense, top, axis=1)
            positive = values > 0
            rows.append(np.repeat(items, positive.sum(axis=1)))
            cols.append(top[positive])
            vals.append(values[positive])
        similarity = sp.csr_matrix(
            (np.concatenate(vals), (np.concatenate(rows), np.concatenate(cols))),
            shape=(n_items, n_items),
        )
        self._keep_similarity(similarity)
        self._keep_history(matrix)
        return self


def _inverse_of_positive_definite(matrix: np.ndarray) -> np.ndarray:
    """The inverse of a symmetric positive definite matrix (a Gram matrix plus l2 I, l2 > 0)
    through its Cholesky factor, in place: half the work of a general inverse, which dominates
    EASE's fit, and no second copy of the matrix."""
    factor, info = lapack.dpotrf(matrix, lower=False, overwrite_a=True, clean=True)
    if info == 0:
        inverse, info = lapack.dpotri(factor, lower=False, overwrite_c=True)
    if info != 0:
        raise ValueError(f"EASE's regularised Gram matrix is not positive definite (LAPACK {info})")
    # dpotri fills the upper triangle; the lower one is still the factor's zeros.
    inverse += np.triu(inverse, 1).T
    return inverse


def _row_stochastic(matrix: sp.csr_matrix) -> sp.csr_matrix:
    """Each row divided by its sum (rows of zeros stay zero)."""
    sums = np.asarray(matrix.sum(axis=1)).ravel()
    scale = np.zeros_like(sums, dtype=np.float32)
    scale[sums > 0] = 1.0 / sums[sums > 0]
    return sp.csr_matrix(sp.diags(scale) @ matrix, dtype=np.float32)


# EASE's dual form serves a request through every user (users^2 per call); the primal form
# through the history's rows of the items x items weights. Parity at a history this long.
DUAL_HISTORY = 100
EASEForm = Literal["auto", "primal", "dual"]


def ease_form(
    n_users: int, n_items: int, max_items: int, form: EASEForm = "auto"
) -> Literal["primal", "dual"] | None:
    """The form EASE solves a users x items matrix in (see EASERecommender), or None where
    the side it would invert is larger than `max_items`."""
    if form not in ("auto", "primal", "dual"):
        raise ValueError(f"EASE form must be auto, primal or dual, got {form!r}")
    dual = form == "dual" or (
        form == "auto" and (n_items > max_items or n_users**2 <= DUAL_HISTORY * n_items)
    )
    if (n_users if dual else n_items) > max_items:
        return None
    return "dual" if dual else "primal"


class EASERecommender(ItemBasedRecommender):
    """EASE (Steck 2019): a closed-form item-item linear model; strong on small catalogues.

    B = I - P diag(1/diag(P)) with P = (X'X + l2 I)^-1, the diagonal of B zero. With at most
    `max_items` items, P is inverted directly (the primal form, an items x items matrix).
    With more items but at most `max_items` users, the same P comes from the users' side by
    the Woodbury identity, P = (I - X' K X) / l2 with K = (l2 I + X X')^-1 (users x users):
    exact EASE, and no items x items matrix is ever formed (the dual form). Catalogues and user
    bases both above `max_items` are refused. `form` "auto" also takes the dual form where
    the users are so few that a request costs no more through them (users^2 at most
    DUAL_HISTORY x items: the primal form's cost for a history of DUAL_HISTORY items), which
    also makes the fit a users x users inversion instead of an items x items one.
    """

    model_type: ClassVar[str] = "ease"
    array_names: ClassVar[tuple[str, ...]] = (
        "weights",
        "dual_kernel",
        "precision_diagonal",
        "user_items_data",
        "user_items_indices",
        "user_items_indptr",
    )

    def __init__(
        self,
        l2: float = 200.0,
        max_items: int = 20_000,
        form: EASEForm = "auto",
        repeat_weight: float = 0.0,
    ) -> None:
        self.l2 = l2
        self.max_items = max_items
        self.form = form
        self.repeat_weight = repeat_weight

    @property
    def n_items(self) -> int:
        return int(self.weights.shape[0] or self.precision_diagonal.shape[0])

    @property
    def dual(self) -> bool:
        return bool(self.dual_kernel.size)

    def fit(self, user_items: sp.csr_matrix) -> Self:
        matrix = check_user_items(user_items)
        n_users, n_items = matrix.shape
        if not self.l2 > 0:
            raise ValueError(f"EASE needs l2 > 0, got {self.l2}")
        solved_as = ease_form(n_users, n_items, self.max_items, self.form)
        if solved_as is None:
            raise ValueError(
                f"EASE needs a catalogue or a user base of at most {self.max_items}, got "
                f"{n_items} items and {n_users} users"
            )
        if solved_as == "primal":
            gram = (matrix.T @ matrix).toarray().astype(np.float64)
            gram[np.diag_indices_from(gram)] += self.l2
            inverse = _inverse_of_positive_definite(gram)
            weights = -inverse / np.diag(inverse)[None, :]
            np.fill_diagonal(weights, 0.0)
            self.weights = weights.astype(np.float32)
            self.dual_kernel = np.zeros((0, 0), dtype=np.float32)
            self.precision_diagonal = np.zeros(0, dtype=np.float32)
        else:
            x = sp.csr_matrix(matrix, dtype=np.float64)
            outer = (x @ x.T).toarray()
            outer[np.diag_indices_from(outer)] += self.l2
            kernel = _inverse_of_positive_definite(outer)
            # diag(P)_j = (1 - x_j' K x_j) / l2, x_j the users' column of item j.
            columns = sp.csc_matrix(x)
            quadratic = np.asarray(columns.multiply(kernel @ columns).sum(axis=0)).ravel()
            self.weights = np.zeros((0, 0), dtype=np.float32)
            self.dual_kernel = kernel.astype(np.float32)
            self.precision_diagonal = ((1.0 - quadratic) / self.l2).astype(np.float32)
        self._keep_history(matrix)
        return self

    def _precision_rows(self, rows: sp.csr_matrix) -> np.ndarray:
        """rows @ P in the dual form: (rows - rows X' K X) / l2, never items x items."""
        # X over the kept arrays as they are: gathering its rows would copy all of it per call.
        x = sp.csr_matrix(
            (self.user_items_data, self.user_items_indices, self.user_items_indptr),
            shape=(self.dual_kernel.shape[0], self.n_items),
        )
        through_users = (rows @ x.T).toarray() @ self.dual_kernel
        back = np.asarray(x.T @ through_users.T).T
        return ((rows.toarray() - back) / self.l2).astype(np.float32)

    def _score_history(self, history: sp.csr_matrix) -> np.ndarray:
        if not self.dual:
            return super()._score_history(history)
        # s = h B with B = -P D^-1 off the diagonal: h - (h P) / diag(P).
        return (history.toarray() - self._precision_rows(history) / self.precision_diagonal).astype(
            np.float32
        )

    def item_rows(self, items: np.ndarray) -> np.ndarray:
        if not self.dual:
            return np.asarray(self.weights[items])
        rows = -self._precision_rows(self._unit_rows(items)) / self.precision_diagonal[None, :]
        rows[np.arange(items.size), items] = 0.0
        return rows

    def item_columns(self, items: np.ndarray) -> np.ndarray:
        if not self.dual:
            return np.asarray(self.weights[:, items])
        # P is symmetric: its columns are its rows.
        precision = self._precision_rows(self._unit_rows(items))
        columns = -precision.T / self.precision_diagonal[items][None, :]
        columns[items, np.arange(items.size)] = 0.0
        return columns

    def _unit_rows(self, items: np.ndarray) -> sp.csr_matrix:
        """One row per item of `items`, 1 in that item's column."""
        return sp.csr_matrix(
            (np.ones(items.size, dtype=np.float32), items, np.arange(items.size + 1)),
            shape=(items.size, self.n_items),
        )

    def _score_items(self, items: np.ndarray, weights: np.ndarray) -> np.ndarray:
        if self.dual:
            return super()._score_items(items, weights)
        return np.asarray(weights @ self.weights[items], dtype=np.float32)
