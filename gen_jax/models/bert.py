"""BERT (Devlin et al., 2019): a bidirectional transformer encoder, post-LayerNorm, as in Hugging
Face's BertModel, so its checkpoints (e.g. the all-MiniLM-L6-v2 sentence embedder) load unchanged
(gen_jax.interop.bert_io). Attention goes through ops.attention; padding is segment 0, which no
query attends to.
"""
import dataclasses

import flax.linen as nn
import jax
import jax.numpy as jnp

from gen_jax import ops


@dataclasses.dataclass(frozen=True)
class BertConfig:
  vocab_size: int = 30522
  hidden_size: int = 384
  num_layers: int = 6
  num_heads: int = 12
  intermediate_size: int = 1536
  max_position_embeddings: int = 512
  type_vocab_size: int = 2
  layer_norm_eps: float = 1e-12
  attention_impl: str = "xla"  # ops.attention's impl.

  @property
  def head_dim(self) -> int:
    return self.hidden_size // self.num_heads


class BertLayer(nn.Module):
  config: BertConfig

  @nn.compact
  def __call__(self, x: jax.Array, mask: jax.Array) -> jax.Array:
    """x [b, t, d], mask [b, t] (1 on tokens, 0 on padding) -> [b, t, d]."""
    c = self.config
    b, t, _ = x.shape
    heads = lambda name: nn.Dense(c.hidden_size, name=name)(x).reshape(  # noqa: E731
        b, t, c.num_heads, c.head_dim)
    attended = ops.attention(heads("query"), heads("key"), heads("value"), causal=False,
                             segment_ids=mask.astype(jnp.int32), impl=c.attention_impl)
    attended = nn.Dense(c.hidden_size, name="attention_out")(attended.reshape(b, t, -1))
    x = nn.LayerNorm(epsilon=c.layer_norm_eps, name="attention_norm")(x + attended)
    # BERT's GELU is the exact (erf) one.
    hidden = jax.nn.gelu(nn.Dense(c.intermediate_size, name="intermediate")(x), approximate=False)
    return nn.LayerNorm(epsilon=c.layer_norm_eps, name="output_norm")(
        x + nn.Dense(c.hidden_size, name="output")(hidden))


class Bert(nn.Module):
  """tokens [b, t] int, mask [b, t] (1 on tokens, 0 on padding) -> hidden states [b, t, d].

  Every row is one segment of token type 0, positions counted from its first token (padding sits
  at the end).
  """
  config: BertConfig

  @nn.compact
  def __call__(self, tokens: jax.Array, mask: jax.Array) -> jax.Array:
    c = self.config
    positions = jnp.arange(tokens.shape[1])[None]
    x = (nn.Embed(c.vocab_size, c.hidden_size, name="word_embeddings")(tokens)
         + nn.Embed(c.max_position_embeddings, c.hidden_size, name="position_embeddings")(positions)
         + nn.Embed(c.type_vocab_size, c.hidden_size, name="token_type_embeddings")(
             jnp.zeros_like(tokens)))
    x = nn.LayerNorm(epsilon=c.layer_norm_eps, name="embedding_norm")(x)
    for i in range(c.num_layers):
      x = BertLayer(c, name=f"layer_{i}")(x, mask)
    return x
