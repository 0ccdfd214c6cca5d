"""cuDNN's packed layout of documents (ops.attention's impl="cudnn" with segment_ids): the lengths
and offsets `packed_documents` derives from segment ids describe exactly the documents the other
implementations mask by id, and, on a Hopper or later GPU, cuDNN's output and gradients equal the
XLA reference's (GEN_JAX_COMPILED_KERNELS=1, as the device script's kernel_tests stage runs it)."""
import importlib
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from gen_jax import ops
from gen_jax.ops.attention import packed_documents

# The module (gen_jax.ops exports the function of the same name).
attention_module = importlib.import_module("gen_jax.ops.attention")


def _packed_rows(seed, rows, length):
  """Segment ids as data.packing writes them: documents of random lengths with increasing ids,
  padding (0) at the end, and some rows with padding inside or at the start, or all padding."""
  r = np.random.default_rng(seed)
  ids = np.zeros((rows, length), np.int32)
  for row in range(rows):
    position, document = int(r.integers(0, 3)) if row % 3 == 2 else 0, 1
    while position < length and row % 5 != 4:
      size = int(r.integers(1, 7))
      ids[row, position:position + size] = document
      position += size + (int(r.integers(0, 2)) if row % 2 else 0)
      document += 1
      if r.random() < 0.15:
        break
  return ids


def _documents(ids_row):
  """[(first position, length)] of the runs of equal nonzero ids."""
  found, start = [], None
  for i, value in enumerate(list(ids_row) + [0]):
    if start is not None and (value != ids_row[start]):
      found.append((start, i - start))
      start = None
    if start is None and value != 0 and i < len(ids_row):
      start = i
  return found


def test_packed_documents_lists_every_run_of_ids_in_order():
  ids = _packed_rows(0, 20, 24)
  lengths, offsets, counts = map(np.asarray, packed_documents(jnp.asarray(ids), 24))
  assert lengths.shape == (20, 24) and offsets.shape == (20, 25)
  for row in range(20):
    documents = _documents(ids[row])
    count = len(documents)
    assert counts[row] == count
    assert [(int(o), int(n)) for o, n in zip(offsets[row, :count], lengths[row, :count])] == documents
    assert (lengths[row, count:] == -1).all() and (offsets[row, count:] == -1).all()
  assert any(len(_documents(row)) == 0 for row in ids)  # An all-padding row is among them.
  assert max(len(_documents(row)) for row in ids) > 4


def test_the_packed_documents_mask_what_segment_ids_mask():
  ids = _packed_rows(1, 12, 16)
  lengths, offsets, _ = map(np.asarray, packed_documents(jnp.asarray(ids), 16))
  positions = np.arange(16)
  # Token i is in document d when offsets[d] <= i < offsets[d] + lengths[d].
  member = ((positions[None, None] >= offsets[:, :-1, None])
            & (positions[None, None] < offsets[:, :-1, None] + lengths[:, :, None])
            & (lengths[:, :, None] > 0))  # [b, M, t]
  same_document = np.einsum("bdi,bdj->bij", member, member) > 0
  expected = np.asarray(ops.attention_mask(16, 16, causal=False, query_segment_ids=jnp.asarray(ids)))
  np.testing.assert_array_equal(same_document, expected)


def test_fewer_slots_than_documents_list_the_first_ones_and_count_them_all():
  ids = jnp.asarray([[1, 1, 2, 3, 3, 3, 4, 0]])
  lengths, offsets, counts = packed_documents(ids, 2)
  assert lengths.tolist() == [[2, 1]] and offsets.tolist() == [[0, 2, -1]]
  assert counts.tolist() == [4]


_ON_GPU = os.environ.get("GEN_JAX_COMPILED_KERNELS") == "1" and jax.default_backend() == "gpu"


@pytest.mark.skipif(not _ON_GPU, reason="cuDNN runs on a GPU (GEN_JAX_COMPILED_KERNELS=1)")
@pytest.mark.parametrize("num_heads,num_kv_heads,causal,window,max_documents",
                         [(4, 4, True, None, 32), (8, 2, True, None, 32), (4, 1, False, None, 32),
                          (4, 2, True, 5, 32), (4, 2, True, None, 2)])
def test_gpu_cudnn_packed_attention_equals_the_reference(monkeypatch, num_heads, num_kv_heads,
                                                          causal, window, max_documents):
  # max_documents 2: rows hold more, so the call runs the Pallas kernel instead.
  monkeypatch.setattr(attention_module, "CUDNN_MAX_DOCUMENTS", max_documents)
  b, t, h = 6, 64, 64
  keys = jax.random.split(jax.random.key(0), 4)
  q = jax.random.normal(keys[0], (b, t, num_heads, h), jnp.bfloat16)
  k = jax.random.normal(keys[1], (b, t, num_kv_heads, h), jnp.bfloat16)
  v = jax.random.normal(keys[2], (b, t, num_kv_heads, h), jnp.bfloat16)
  d_out = jax.random.normal(keys[3], (b, t, num_heads, h), jnp.float32)
  ids = jnp.asarray(_packed_rows(2, b, t))

  def run(impl):
    def loss(q, k, v):
      out = ops.attention(q, k, v, causal=causal, segment_ids=ids, sliding_window=window,
                          impl=impl)
      return (out.astype(jnp.float32) * d_out).sum(), out
    (_, out), grads = jax.jit(jax.value_and_grad(loss, argnums=(0, 1, 2), has_aux=True))(q, k, v)
    return [np.asarray(x, np.float32) for x in (out, *grads)]

  for got, want, name in zip(run("cudnn"), run("xla"), ("out", "dq", "dk", "dv")):
    assert np.isfinite(got).all(), name
    np.testing.assert_allclose(got, want, atol=5e-2, rtol=5e-2, err_msg=name)
