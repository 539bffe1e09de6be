"""Nearest items in large catalogs: the FAISS HNSW index against exact brute force."""

from __future__ import annotations

import pickle

import numpy as np

from scoring.catalog import BruteForceIndex, FaissIndex, ItemCatalog, make_vector_index


def _unit_rows(n: int, dim: int, seed: int = 0) -> np.ndarray:
    x = np.random.default_rng(seed).normal(size=(n, dim))
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def test_the_index_is_chosen_by_catalog_size():
    assert isinstance(make_vector_index(16, 1_000), BruteForceIndex)
    assert isinstance(make_vector_index(16, 60_000), FaissIndex)


def test_faiss_recall_at_10_against_brute_force():
    vectors = _unit_rows(5_000, 16)
    ann, exact = FaissIndex(16), BruteForceIndex()
    for i, v in enumerate(vectors):
        ann.add(i, v)
    queries = _unit_rows(200, 16, seed=1)
    recall = []
    for q in queries:
        got, sims = ann.query(vectors, len(vectors), q, 10)
        want, _ = exact.query(vectors, len(vectors), q, 10)
        assert np.all(np.diff(sims) <= 1e-12)  # best first, exact cosines
        np.testing.assert_allclose(sims, vectors[got] @ q)
        recall.append(len(set(got.tolist()) & set(want.tolist())) / 10)
    assert np.mean(recall) >= 0.9


def test_a_changed_vector_is_found_where_it_now_is_and_the_catalog_survives_pickling():
    cat = ItemCatalog(dim=8, pop_half_life=3600.0, expected_items=300, ann_threshold=100)
    assert isinstance(cat.vector_index, FaissIndex)
    vectors = _unit_rows(300, 8)
    for i, v in enumerate(vectors):
        cat.add_item(f"i{i}", v)
    target = vectors[7]
    cat.add_item("i0", target)  # i0 now points where i7 does
    top, sims = cat.nearest(target, 2)
    assert sorted(top.tolist()) == [0, 7] and np.allclose(sims, 1.0)
    again = pickle.loads(pickle.dumps(cat))
    assert isinstance(again.vector_index, FaissIndex)
    assert sorted(again.nearest(target, 2)[0].tolist()) == [0, 7]
