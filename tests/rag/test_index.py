"""The vector index: exact search equals a numpy argsort (on one device and split over eight),
HNSW finds nearly the same rows, deletes are skipped by both searches and survive a compaction,
and a saved index reloads to identical results."""
import jax
import numpy as np
import pytest

from gen_jax.rag.index import VectorIndex, recall_at_k


def _unit(rng, n, d=16):
  x = rng.normal(size=(n, d)).astype(np.float32)
  return x / np.linalg.norm(x, axis=1, keepdims=True)


def _numpy_top_k(queries, vectors, ids, k):
  scores = queries @ vectors.T
  order = np.argsort(-scores, axis=1, kind="stable")[:, :k]
  return np.take_along_axis(scores, order, 1), ids[order]


@pytest.fixture
def filled():
  rng = np.random.default_rng(0)
  index = VectorIndex(16)
  vectors = _unit(rng, 300)
  ids = index.add(vectors, [{"text": f"chunk {i}", "source": "a.txt"} for i in range(300)])
  return index, vectors, ids, _unit(rng, 12)


def test_exact_search_equals_numpy_on_one_device_and_on_eight(filled):
  index, vectors, ids, queries = filled
  want_scores, want_ids = _numpy_top_k(queries, vectors, ids, 10)
  scores, got = index.search(queries, 10)
  np.testing.assert_array_equal(got, want_ids)
  np.testing.assert_allclose(scores, want_scores, rtol=1e-5)
  mesh = jax.make_mesh((8,), ("data",))
  sharded_scores, sharded = index.search(queries, 10, mesh=mesh)
  np.testing.assert_array_equal(sharded, want_ids)
  np.testing.assert_allclose(sharded_scores, want_scores, rtol=1e-5)
  assert index.record(int(got[0, 0])) == {"text": f"chunk {got[0, 0]}", "source": "a.txt"}


def test_hnsw_recall_against_exact_search(filled):
  index, _, _, queries = filled
  _, exact = index.search(queries, 10)
  _, approximate = index.search(queries, 10, exact=False)
  assert recall_at_k(approximate, exact) >= 0.9
  assert recall_at_k(exact, exact) == 1.0
  assert recall_at_k(np.full_like(exact, -1), exact) == 0.0


def test_deleted_rows_are_never_returned_and_compaction_keeps_ids(filled):
  index, vectors, ids, queries = filled
  _, before = index.search(queries, 5)
  gone = np.unique(before[:, 0])
  index.delete(gone)
  keep = ~np.isin(ids, gone)
  want_scores, want = _numpy_top_k(queries, vectors[keep], ids[keep], 5)
  for exact in (True, False):
    _, got = index.search(queries, 5, exact=exact)
    assert not np.isin(got, gone).any()
  np.testing.assert_array_equal(index.search(queries, 5)[1], want)
  with pytest.raises(KeyError, match="ids not in the index"):
    index.delete(gone[:1])
  index.compact()
  assert len(index) == keep.sum() == len(index.vectors)
  np.testing.assert_array_equal(index.search(queries, 5)[1], want)
  new = index.add(_unit(np.random.default_rng(1), 2), [{"text": "x"}, {"text": "y"}])
  np.testing.assert_array_equal(new, [300, 301])  # Ids are never reused.


def test_fewer_alive_rows_than_k_pad_with_minus_one():
  index = VectorIndex(4)
  index.add(np.eye(4, dtype=np.float32)[:2], [{"text": "a"}, {"text": "b"}])
  for exact in (True, False):
    scores, ids = index.search(np.eye(4, dtype=np.float32)[:1], 3, exact=exact)
    np.testing.assert_array_equal(ids, [[0, 1, -1]])
    assert scores[0, 0] == pytest.approx(1.0) and scores[0, 2] == -np.inf


def test_a_saved_index_reloads_to_identical_results(filled, tmp_path):
  index, _, ids, queries = filled
  index.delete(ids[:3])
  index.save(str(tmp_path / "index"))
  loaded = VectorIndex.load(str(tmp_path / "index"))
  for exact in (True, False):
    a, b = index.search(queries, 7, exact=exact), loaded.search(queries, 7, exact=exact)
    np.testing.assert_array_equal(a[1], b[1])
    np.testing.assert_array_equal(a[0], b[0])
  assert loaded.records == index.records and loaded.next_id == index.next_id
  with pytest.raises(ValueError, match="has no index.json: not a saved gen_jax index"):
    VectorIndex.load(str(tmp_path))


def test_bad_inputs_name_the_problem():
  index = VectorIndex(4)
  with pytest.raises(ValueError, match=r"vectors of shape \(2, 3\): the index holds \[n, 4\]"):
    index.add(np.zeros((2, 3)), [{}, {}])
  with pytest.raises(ValueError, match="1 records for 2 vectors"):
    index.add(np.zeros((2, 4)), [{}])
  with pytest.raises(ValueError, match="k=0: must be positive"):
    index.search(np.zeros((1, 4)), 0)
