"""Every model passes the same checks on a dataset whose answer is known.

Two communities: users 0..19 interact only with items 0..9, users 20..39 only with items
10..19. Each user has seen a few items of their own block; the rest of the block is the answer.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import scipy.sparse as sp

from recsvc.models import (
    ALSRecommender,
    BlendRecommender,
    BPRRecommender,
    EASERecommender,
    ItemKNNRecommender,
    LightFMRecommender,
    PopularityRecommender,
    Recommender,
    RP3BetaRecommender,
    TrendingRecommender,
    load_model,
)

N_USERS, N_ITEMS, BLOCK_USERS, BLOCK_ITEMS = 40, 20, 20, 10


def block_matrix(seed: int = 0) -> sp.csr_matrix:
    rng = np.random.default_rng(seed)
    rows, cols = [], []
    for user in range(N_USERS):
        block = user // BLOCK_USERS
        seen = rng.choice(BLOCK_ITEMS, size=6, replace=False) + block * BLOCK_ITEMS
        rows += [user] * seen.size
        cols += seen.tolist()
    return sp.csr_matrix((np.ones(len(rows), np.float32), (rows, cols)), shape=(N_USERS, N_ITEMS))


class RecommenderContract:
    """Mixin: a test class supplies `make()`; these tests run for every model."""

    personalised = True

    def make(self) -> Recommender:
        raise NotImplementedError

    def test_fit_returns_self(self) -> None:
        model = self.make()
        assert model.fit(block_matrix()) is model

    def test_recommend_shapes_and_exclusion(self) -> None:
        matrix = block_matrix()
        model = self.make().fit(matrix)
        ids, scores = model.recommend(np.arange(N_USERS), 5, exclude=matrix)
        assert ids.shape == scores.shape == (N_USERS, 5)
        for user in range(N_USERS):
            assert not set(ids[user]) & set(matrix[user].indices), "returned an excluded item"
            assert np.all(np.diff(scores[user]) <= 0), "not sorted best first"

    def test_known_answer(self) -> None:
        matrix = block_matrix()
        model = self.make().fit(matrix)
        ids, _ = model.recommend(np.arange(N_USERS), 3, exclude=matrix)
        in_block = (ids // BLOCK_ITEMS) == (np.arange(N_USERS) // BLOCK_USERS)[:, None]
        if self.personalised:
            assert in_block.mean() > 0.9
        similar, _ = model.similar_items(np.arange(N_ITEMS), 3)
        assert not np.any(similar == np.arange(N_ITEMS)[:, None]), "an item is similar to itself"
        if self.personalised:
            same = (similar // BLOCK_ITEMS) == (np.arange(N_ITEMS) // BLOCK_ITEMS)[:, None]
            assert same.mean() > 0.9

    def test_scores_a_history_it_was_not_fitted_on(self) -> None:
        """A user given only by their interactions (a new user, or fresh events) is served
        from their block, like the users the model was fitted on."""
        matrix = block_matrix()
        model = self.make().fit(block_matrix(seed=1))
        scores = model.score_history(matrix)
        assert scores.shape == (N_USERS, N_ITEMS)
        from recsvc.models.base import mask_rows, top_k

        mask_rows(scores, matrix)
        ids, _ = top_k(scores, 3)
        if self.personalised:
            in_block = (ids // BLOCK_ITEMS) == (np.arange(N_USERS) // BLOCK_USERS)[:, None]
            assert in_block.mean() > 0.9

    def test_one_user_scores_like_a_batch(self) -> None:
        """Serving scores one user at a time, through a faster path: same numbers."""
        model = self.make().fit(block_matrix())
        batch = model.score(np.arange(N_USERS))
        for user in (0, 7, 33):
            np.testing.assert_allclose(
                model.score(np.array([user]))[0], batch[user], rtol=1e-5, atol=1e-6
            )

    def test_more_than_catalogue_pads_with_minus_one(self) -> None:
        matrix = block_matrix()
        model = self.make().fit(matrix)
        ids, scores = model.recommend(np.array([0]), N_ITEMS + 5, exclude=matrix[[0]])
        assert ids.shape == (1, N_ITEMS)
        assert (ids[0] == -1).sum() == matrix[0].nnz
        assert np.all(np.isneginf(scores[0][ids[0] == -1]))

    def test_same_seed_same_model(self) -> None:
        a = self.make().fit(block_matrix())
        b = self.make().fit(block_matrix())
        users = np.arange(N_USERS)
        np.testing.assert_array_equal(a.score(users), b.score(users))

    def test_fit_starts_from_scratch(self) -> None:
        model = self.make().fit(block_matrix())
        bigger = sp.hstack([block_matrix(), block_matrix(1)]).tocsr()
        model.fit(bigger)
        assert model.n_items == 2 * N_ITEMS
        fresh = self.make().fit(bigger)
        np.testing.assert_array_equal(model.score(np.arange(3)), fresh.score(np.arange(3)))

    def test_save_load_roundtrip_without_pickle(self, tmp_path: Path) -> None:
        model = self.make().fit(block_matrix())
        model.save(tmp_path / "m")
        for array in (tmp_path / "m").glob("*.npy"):
            np.load(array, allow_pickle=False)
        loaded = load_model(tmp_path / "m")
        assert type(loaded) is type(model)
        assert loaded.get_params() == model.get_params()
        users = np.arange(N_USERS)
        np.testing.assert_array_equal(loaded.recommend(users, 5)[0], model.recommend(users, 5)[0])

    def test_rejects_empty_or_negative_input(self) -> None:
        with pytest.raises(ValueError, match="empty"):
            self.make().fit(sp.csr_matrix((3, 4), dtype=np.float32))
        with pytest.raises(ValueError, match="non-negative"):
            self.make().fit(sp.csr_matrix(-np.ones((2, 2), np.float32)))


class TestALS(RecommenderContract):
    def make(self) -> Recommender:
        return ALSRecommender(
            factors=4, iterations=15, regularization=0.1, alpha=40.0, random_state=3
        )

    def test_all_cores_give_the_single_threaded_factors(self) -> None:
        from implicit.cpu.als import AlternatingLeastSquares

        matrix = block_matrix()
        ours = self.make().fit(matrix)
        one_thread = AlternatingLeastSquares(
            factors=4, iterations=15, regularization=0.1, alpha=40.0, random_state=3, num_threads=1
        )
        one_thread.fit(matrix, show_progress=False)
        np.testing.assert_array_equal(ours.item_factors, one_thread.item_factors)
        np.testing.assert_array_equal(ours.user_factors, one_thread.user_factors)

    def test_fold_in_reproduces_the_fitted_users(self) -> None:
        matrix = block_matrix()
        model = self.make().fit(matrix)
        fitted = np.argsort(-model.score(np.arange(N_USERS)), axis=1)[:, :5]
        folded = np.argsort(-model.score_history(matrix), axis=1)[:, :5]
        overlap = np.mean([len(set(a) & set(b)) / 5 for a, b in zip(fitted, folded, strict=True)])
        assert overlap > 0.8, overlap


class TestPopularity(RecommenderContract):
    personalised = False

    def make(self) -> Recommender:
        return PopularityRecommender()

    def test_most_popular_first(self) -> None:
        matrix = sp.csr_matrix(np.array([[1, 1, 0], [1, 0, 0], [1, 1, 1]], np.float32))
        ids, _ = PopularityRecommender().fit(matrix).recommend(np.array([0]), 3)
        assert ids[0].tolist() == [0, 1, 2]


class TestTrending(RecommenderContract):
    personalised = False

    def make(self) -> Recommender:
        return TrendingRecommender()

    def test_weight_not_head_count_decides(self) -> None:
        # Item 2 has one user but a heavy recent weight; item 0 many users with faded weights.
        matrix = sp.csr_matrix(np.array([[0.1, 0, 0], [0.1, 0.2, 0], [0.1, 0, 5.0]], np.float32))
        ids, _ = TrendingRecommender().fit(matrix).recommend(np.array([0]), 3)
        assert ids[0].tolist() == [2, 0, 1]


class TestBlend(RecommenderContract):
    def make(self) -> Recommender:
        return BlendRecommender(
            [
                {"model_type": "itemknn", "params": {"neighbours": 20, "weighting": "cosine"}},
                {"model_type": "ease", "params": {"l2": 10.0, "max_items": 100}},
            ],
            [0.5, 0.5],
        )

    def test_a_lone_weight_ranks_like_its_member(self) -> None:
        matrix = block_matrix()
        knn = ItemKNNRecommender(20, "cosine").fit(matrix)
        ease = EASERecommender(10.0).fit(matrix)
        alone = BlendRecommender.of_fitted([knn, ease], [0.0, 1.0])
        users = np.arange(N_USERS)
        np.testing.assert_array_equal(
            alone.recommend(users, 5, exclude=matrix)[0],
            ease.recommend(users, 5, exclude=matrix)[0],
        )

    def test_bad_blends_are_refused(self) -> None:
        knn = ItemKNNRecommender(20, "cosine").fit(block_matrix())
        with pytest.raises(ValueError, match="two or more"):
            BlendRecommender.of_fitted([knn], [1.0])
        with pytest.raises(ValueError, match="non-negative"):
            BlendRecommender.of_fitted([knn, knn], [1.0, -1.0])


class TestEqualBlendOfThree(RecommenderContract):
    """The shape the pipeline serves where the holdout cannot rank its fitted pair above it."""

    def make(self) -> Recommender:
        return BlendRecommender(
            [
                {
                    "model_type": "als",
                    "params": {
                        "factors": 4,
                        "regularization": 0.1,
                        "alpha": 40.0,
                        "random_state": 3,
                    },
                },
                {"model_type": "itemknn", "params": {"neighbours": 20, "weighting": "cosine"}},
                {"model_type": "ease", "params": {"l2": 10.0, "max_items": 100}},
            ],
            [1 / 3, 1 / 3, 1 / 3],
        )


class TestBPR(RecommenderContract):
    def make(self) -> Recommender:
        return BPRRecommender(factors=8, iterations=200, learning_rate=0.05, random_state=3)


class TestItemKNNCosine(RecommenderContract):
    def make(self) -> Recommender:
        return ItemKNNRecommender(neighbours=10, weighting="cosine")


class TestItemKNNBM25(RecommenderContract):
    def make(self) -> Recommender:
        return ItemKNNRecommender(neighbours=10, weighting="bm25")


class TestRP3Beta(RecommenderContract):
    def make(self) -> Recommender:
        return RP3BetaRecommender(neighbours=10, alpha=0.8, beta=0.3)

    def test_popular_end_items_are_penalised_by_beta(self) -> None:
        """From item 0 a walk ends at item 2 (seen by four users) with probability 5/12 and
        at item 1 (seen by one) with 1/6; beta 1 divides by those counts: 5/48 against 1/6."""
        matrix = sp.csr_matrix(
            np.array(
                [[1, 1, 1], [1, 0, 1], [0, 0, 1], [0, 0, 1]],
                dtype=np.float32,
            )
        )
        plain = RP3BetaRecommender(neighbours=3, alpha=1.0, beta=0.0).fit(matrix)
        penalised = RP3BetaRecommender(neighbours=3, alpha=1.0, beta=1.0).fit(matrix)
        row = lambda model: model.item_rows(np.array([0])).toarray()[0]  # noqa: E731
        np.testing.assert_allclose(row(plain)[1:], [1 / 6, 5 / 12], rtol=1e-6)
        np.testing.assert_allclose(row(penalised)[1:], [1 / 6, 5 / 48], rtol=1e-6)

    def test_blocks_give_the_whole_product(self, monkeypatch: pytest.MonkeyPatch) -> None:
        whole = RP3BetaRecommender(neighbours=5).fit(block_matrix())
        monkeypatch.setattr(RP3BetaRecommender, "BLOCK", 3)
        blocked = RP3BetaRecommender(neighbours=5).fit(block_matrix())
        np.testing.assert_allclose(
            whole.item_rows(np.arange(whole.n_items)).toarray(),
            blocked.item_rows(np.arange(blocked.n_items)).toarray(),
            rtol=1e-6,
        )


class TestEASE(RecommenderContract):
    def make(self) -> Recommender:
        return EASERecommender(l2=10.0)

    def test_refuses_large_catalogues_with_many_users(self) -> None:
        with pytest.raises(ValueError, match="at most 5, got"):
            EASERecommender(max_items=5).fit(block_matrix())


class TestItemKNNRepeat(RecommenderContract):
    def make(self) -> Recommender:
        return ItemKNNRecommender(neighbours=10, weighting="cosine", repeat_weight=1.0)


class TestEASERepeat(RecommenderContract):
    def make(self) -> Recommender:
        return EASERecommender(l2=10.0, repeat_weight=3.0)


def confident_blocks() -> sp.csr_matrix:
    """The block matrix with confidences 1 to 6 along each user's row."""
    matrix = block_matrix()
    matrix.data = np.tile(np.arange(1, 7, dtype=np.float32), N_USERS)
    return matrix


@pytest.mark.parametrize(
    "make",
    [
        lambda w: ItemKNNRecommender(neighbours=10, weighting="cosine", repeat_weight=w),
        lambda w: RP3BetaRecommender(neighbours=10, repeat_weight=w),
        lambda w: EASERecommender(l2=10.0, repeat_weight=w),
        lambda w: EASERecommender(l2=10.0, form="dual", repeat_weight=w),
    ],
    ids=["itemknn", "rp3beta", "ease", "ease-dual"],
)
def test_repeat_weight_lifts_a_user_s_own_items_by_their_confidence(make) -> None:
    """TIFU-kNN's personal frequency: each item the user touched gains repeat_weight times
    their best neighbour score per the strongest confidence, times its own; batch (empty rows
    among them), one user and a history the model was not fitted on alike. Heavy enough, it
    ranks by confidence."""
    matrix = confident_blocks()
    plain, lifted = make(0.0).fit(matrix), make(2.0).fit(matrix)
    users = np.arange(N_USERS)
    expected = plain.score(users)
    for user in users:
        row = matrix[user]
        expected[user, row.indices] += 2.0 * max(expected[user].max(), 0) / 6.0 * row.data
    np.testing.assert_allclose(lifted.score(users), expected, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(lifted.score(users[:1])[0], expected[0], rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(lifted.score_history(matrix), expected, rtol=1e-4, atol=1e-4)
    gaps = sp.vstack([sp.csr_matrix((1, N_ITEMS)), matrix[:3], sp.csr_matrix((2, N_ITEMS)),
                      matrix[3:5], sp.csr_matrix((1, N_ITEMS))]).tocsr()  # fmt: skip
    no_history = plain.score_history(sp.csr_matrix((1, N_ITEMS)))[0]
    np.testing.assert_allclose(
        lifted.score_history(gaps),
        np.vstack([no_history, expected[:3], no_history, no_history, expected[3:5], no_history]),
        rtol=1e-4, atol=1e-4,
    )  # fmt: skip
    strongest = matrix.indices[matrix.indptr[1:] - 1]  # each row's confidence 6
    assert not np.array_equal(np.argmax(plain.score(users), axis=1), strongest)
    heavy = make(100.0).fit(matrix)  # personal frequency outweighs the neighbours
    assert np.array_equal(np.argmax(heavy.score(users), axis=1), strongest)


class TestEASEDual:
    """More items than `max_items` but few users: EASE from the users' side (Woodbury)."""

    def wide(self) -> sp.csr_matrix:
        return block_matrix().T.tocsr()[:12]  # 12 users x 40 items

    def test_the_dual_form_is_exactly_the_primal(self) -> None:
        matrix = self.wide()
        primal = EASERecommender(l2=10.0, form="primal").fit(matrix)
        dual = EASERecommender(l2=10.0, max_items=matrix.shape[0]).fit(matrix)
        assert dual.dual and not primal.dual and dual.weights.size == 0
        # So few users (12^2 <= 100 x 40 items) that "auto" serves through them too.
        assert EASERecommender(l2=10.0).fit(matrix).dual
        users, items = np.arange(matrix.shape[0]), np.arange(matrix.shape[1])
        np.testing.assert_allclose(dual.score(users), primal.score(users), atol=1e-4)
        np.testing.assert_allclose(dual.score(users[:1]), primal.score(users[:1]), atol=1e-4)
        np.testing.assert_allclose(dual.item_rows(items), primal.item_rows(items), atol=1e-4)
        np.testing.assert_allclose(
            dual.item_columns(items[:3]), primal.item_columns(items[:3]), atol=1e-4
        )
        assert np.array_equal(
            dual.similar_items(items[:2], 5)[0], primal.similar_items(items[:2], 5)[0]
        )

    def test_save_and_load_keep_the_dual_form(self, tmp_path: Path) -> None:
        matrix = self.wide()
        dual = EASERecommender(l2=10.0, max_items=matrix.shape[0]).fit(matrix)
        dual.save(tmp_path / "m")
        loaded = EASERecommender.load(tmp_path / "m")
        assert loaded.dual
        np.testing.assert_allclose(loaded.score(np.arange(12)), dual.score(np.arange(12)))


class TestLightFM(RecommenderContract):
    def make(self) -> Recommender:
        return LightFMRecommender(factors=8, epochs=30, random_state=3)
