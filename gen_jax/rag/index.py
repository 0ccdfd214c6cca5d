"""A vector index of unit-norm embeddings with their chunks' texts and metadata.

Exact search is a jitted matmul and top-k (over the collection split across devices when a mesh is
given: each device ranks its rows, then the k best of the candidates win). Approximate search is
faiss's HNSW graph (Malkov & Yashunin, 2018) on inner products. Rows keep stable integer ids;
delete marks rows dead (both searches skip them; compact() drops them for good). save/load
round-trip everything, the HNSW graph included, so a reloaded index answers identically.

Scores are inner products, which for unit-norm vectors are cosine similarities.
"""
import functools
import json
import os

import faiss
import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec

from gen_jax.data.packing import power_of_two_bucket

FILES = {"meta": "index.json", "arrays": "vectors.npz", "records": "records.jsonl",
         "hnsw": "hnsw.faiss"}
MIN_CAPACITY = 1024


def _capacity(n: int) -> int:
  """Rows of the padded matrix exact search reads: a power of two, so adds rarely recompile."""
  return power_of_two_bucket(n, minimum=MIN_CAPACITY)


@functools.partial(jax.jit, static_argnames=("k",))
def _top_k(queries: jax.Array, vectors: jax.Array, alive: jax.Array, k: int):
  """(scores [q, k], rows [q, k]) of the k best alive rows of vectors [n, d] for queries [q, d]."""
  scores = jnp.where(alive[None], queries @ vectors.T, -jnp.inf)
  return jax.lax.top_k(scores, k)


def _sharded_top_k(mesh: jax.sharding.Mesh, axis: str, k: int):
  """_top_k with vectors' rows split over mesh axis `axis`: each device's k best, gathered, then
  the k best of those; equal to _top_k (ties aside)."""
  def local(queries, vectors, alive):
    scores, rows = _top_k(queries, vectors, alive, k)
    rows = rows + jax.lax.axis_index(axis) * vectors.shape[0]  # Local row -> global row.
    scores = jax.lax.all_gather(scores, axis, axis=1, tiled=True)  # [q, devices * k]
    rows = jax.lax.all_gather(rows, axis, axis=1, tiled=True)
    best, where = jax.lax.top_k(scores, k)
    return best, jnp.take_along_axis(rows, where, axis=1)
  return jax.jit(jax.shard_map(
      local, mesh=mesh, in_specs=(PartitionSpec(), PartitionSpec(axis), PartitionSpec(axis)),
      out_specs=(PartitionSpec(), PartitionSpec()), check_vma=False))


class VectorIndex:
  """Rows of (id, unit-norm vector [dim], record dict: the chunk's text and metadata).

  Args:
    dim: vector width.
    hnsw_m: HNSW's neighbours per node (faiss's M).
    ef_construction, ef_search: HNSW's candidate-list sizes when building and searching (larger:
      better recall, slower).
  """

  def __init__(self, dim: int, *, hnsw_m: int = 32, ef_construction: int = 200,
               ef_search: int = 128):
    self.dim = dim
    self.settings = {"hnsw_m": hnsw_m, "ef_construction": ef_construction,
                     "ef_search": ef_search}
    self.vectors = np.zeros((0, dim), np.float32)
    self.ids = np.zeros((0,), np.int64)
    self.alive = np.zeros((0,), bool)
    self.records: list[dict] = []
    self.next_id = 0
    self._hnsw = self._new_hnsw()
    # (capacity, mesh, axis), padded vectors, alive: on device, rebuilt after a change.
    self._device_cache = None

  def _new_hnsw(self):
    index = faiss.IndexHNSWFlat(self.dim, self.settings["hnsw_m"], faiss.METRIC_INNER_PRODUCT)
    index.hnsw.efConstruction = self.settings["ef_construction"]
    index.hnsw.efSearch = self.settings["ef_search"]
    return index

  def __len__(self) -> int:
    """Alive rows."""
    return int(self.alive.sum())

  def add(self, vectors: np.ndarray, records: list[dict]) -> np.ndarray:
    """Appends rows; returns their new ids [n]. vectors [n, dim] (unit norm), one record each."""
    vectors = np.asarray(vectors, np.float32)
    if vectors.ndim != 2 or vectors.shape[1] != self.dim:
      raise ValueError(f"vectors of shape {vectors.shape}: the index holds [n, {self.dim}]")
    if len(records) != len(vectors):
      raise ValueError(f"{len(records)} records for {len(vectors)} vectors")
    ids = np.arange(self.next_id, self.next_id + len(vectors), dtype=np.int64)
    self.next_id += len(vectors)
    self.vectors = np.concatenate([self.vectors, vectors])
    self.ids = np.concatenate([self.ids, ids])
    self.alive = np.concatenate([self.alive, np.ones(len(vectors), bool)])
    self.records += [dict(r) for r in records]
    self._hnsw.add(vectors)  # Its row numbers follow ours.
    self._device_cache = None
    return ids

  def delete(self, ids) -> None:
    """Marks rows dead; KeyError names an id that is not alive."""
    rows = self._rows(ids)
    dead = [int(i) for i, r in zip(np.atleast_1d(ids), rows) if r < 0 or not self.alive[r]]
    if dead:
      raise KeyError(f"ids not in the index: {dead[:10]}")
    self.alive[rows] = False
    self._device_cache = None

  def compact(self) -> None:
    """Drops dead rows and rebuilds the HNSW graph (ids do not change)."""
    keep = np.flatnonzero(self.alive)
    self.vectors, self.ids, self.alive = self.vectors[keep], self.ids[keep], self.alive[keep]
    self.records = [self.records[r] for r in keep]
    self._hnsw = self._new_hnsw()
    if len(keep):
      self._hnsw.add(self.vectors)
    self._device_cache = None

  def _rows(self, ids) -> np.ndarray:
    """Row of each id (-1 where absent)."""
    ids = np.atleast_1d(np.asarray(ids, np.int64))
    if not len(self.ids):
      return np.full(ids.shape, -1)
    where = np.minimum(np.searchsorted(self.ids, ids), len(self.ids) - 1)  # ids increase.
    return np.where(self.ids[where] == ids, where, -1)

  def record(self, id_: int) -> dict:
    row = self._rows([id_])[0]
    if row < 0 or not self.alive[row]:
      raise KeyError(f"id {id_} is not in the index")
    return self.records[row]

  def search(self, queries: np.ndarray, k: int, *, exact: bool = True,
             mesh: jax.sharding.Mesh | None = None, axis: str = "data"
             ) -> tuple[np.ndarray, np.ndarray]:
    """(scores [q, k] float32, ids [q, k] int64) of the k best alive rows per query, best first;
    where fewer than k rows are alive, the tail holds score -inf and id -1.

    exact: the jitted matmul (over `mesh`'s `axis` when a mesh is given); else HNSW.
    """
    queries = np.atleast_2d(np.asarray(queries, np.float32))
    if queries.shape[1] != self.dim:
      raise ValueError(f"queries of shape {queries.shape}: the index holds [n, {self.dim}]")
    if k <= 0:
      raise ValueError(f"k={k}: must be positive")
    scores, rows = (self._exact_rows(queries, k, mesh, axis) if exact
                    else self._hnsw_rows(queries, k))  # Rows -1 (score -inf) past the alive ones.
    ids = np.append(self.ids, -1)[rows]  # Row -1 picks the appended -1.
    return scores.astype(np.float32), ids.astype(np.int64)

  def _exact_rows(self, queries, k, mesh, axis):
    capacity = _capacity(len(self.vectors))
    devices = mesh.shape[axis] if mesh is not None else 1
    capacity = -(-capacity // devices) * devices
    key = (capacity, mesh, axis)
    if self._device_cache is None or self._device_cache[0] != key:
      vectors = np.zeros((capacity, self.dim), np.float32)
      vectors[:len(self.vectors)] = self.vectors
      alive = np.zeros((capacity,), bool)
      alive[:len(self.alive)] = self.alive
      if mesh is not None:
        rows = NamedSharding(mesh, PartitionSpec(axis))
        self._device_cache = (key, jax.device_put(vectors, rows), jax.device_put(alive, rows))
      else:
        self._device_cache = (key, jnp.asarray(vectors), jnp.asarray(alive))
    _, vectors, alive = self._device_cache
    kk = min(k, capacity // devices)
    if mesh is not None:
      scores, rows = _sharded_top_k(mesh, axis, kk)(jnp.asarray(queries), vectors, alive)
    else:
      scores, rows = _top_k(jnp.asarray(queries), vectors, alive, kk)
    scores, rows = np.asarray(scores), np.asarray(rows)
    rows = np.where(np.isfinite(scores), rows, -1)
    return self._pad(scores, rows, k)

  def _hnsw_rows(self, queries, k):
    dead = len(self.alive) - len(self)
    fetch = min(k + dead, len(self.alive))  # Dead rows are skipped, so ask for that many more.
    if fetch == 0:
      return self._pad(np.zeros((len(queries), 0), np.float32),
                       np.zeros((len(queries), 0), np.int64), k)
    self._hnsw.hnsw.efSearch = max(self.settings["ef_search"], fetch)
    scores, rows = self._hnsw.search(queries, fetch)
    scores_out = np.full((len(queries), k), -np.inf, np.float32)
    rows_out = np.full((len(queries), k), -1, np.int64)
    for q in range(len(queries)):
      kept = [(s, r) for s, r in zip(scores[q], rows[q]) if r >= 0 and self.alive[r]][:k]
      for j, (s, r) in enumerate(kept):
        scores_out[q, j], rows_out[q, j] = s, r
    return scores_out, rows_out

  @staticmethod
  def _pad(scores, rows, k):
    missing = k - scores.shape[1]
    if missing > 0:
      scores = np.pad(scores, ((0, 0), (0, missing)), constant_values=-np.inf)
      rows = np.pad(rows, ((0, 0), (0, missing)), constant_values=-1)
    return scores, rows

  def save(self, directory: str) -> None:
    """Writes index.json, vectors.npz, records.jsonl and hnsw.faiss into `directory`."""
    os.makedirs(directory, exist_ok=True)
    path = lambda name: os.path.join(directory, FILES[name])  # noqa: E731
    with open(path("meta"), "w") as f:
      json.dump({"dim": self.dim, "next_id": self.next_id, **self.settings}, f, indent=2)
    np.savez(path("arrays"), vectors=self.vectors, ids=self.ids, alive=self.alive)
    with open(path("records"), "w") as f:
      for r in self.records:
        f.write(json.dumps(r, ensure_ascii=False) + "\n")
    faiss.write_index(self._hnsw, path("hnsw"))

  @classmethod
  def load(cls, directory: str) -> "VectorIndex":
    """The index `save` wrote; ValueError names a missing file."""
    path = lambda name: os.path.join(directory, FILES[name])  # noqa: E731
    for name in FILES:
      if not os.path.exists(path(name)):
        raise ValueError(f"{directory}: has no {FILES[name]}: not a saved gen_jax index")
    with open(path("meta")) as f:
      meta = json.load(f)
    index = cls(meta["dim"], hnsw_m=meta["hnsw_m"], ef_construction=meta["ef_construction"],
                ef_search=meta["ef_search"])
    arrays = np.load(path("arrays"))
    index.vectors, index.ids, index.alive = arrays["vectors"], arrays["ids"], arrays["alive"]
    with open(path("records")) as f:
      index.records = [json.loads(line) for line in f]
    index.next_id = meta["next_id"]
    index._hnsw = faiss.read_index(path("hnsw"))
    index._hnsw.hnsw.efSearch = meta["ef_search"]
    return index


def recall_at_k(approximate_ids: np.ndarray, exact_ids: np.ndarray) -> float:
  """The mean fraction of each query's exact top-k ids that the approximate top-k also holds
  (both [q, k]; -1 padding is not counted)."""
  hits = total = 0
  for approx, exact in zip(approximate_ids, exact_ids):
    wanted = set(int(i) for i in exact if i >= 0)
    hits += len(wanted & set(int(i) for i in approx))
    total += len(wanted)
  return hits / max(total, 1)
