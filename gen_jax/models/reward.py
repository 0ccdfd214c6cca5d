"""A scalar head on the decoder's hidden states: the reward model of RLHF (Ouyang et al., 2022,
"Training language models to follow instructions with human feedback") and PPO's value head."""
import math

import flax.linen as nn
import jax
import jax.numpy as jnp

from gen_jax.models.layers import partitioned
from gen_jax.models.transformer import Transformer, TransformerConfig


class ScalarHead(nn.Module):
  """[b, t, d] hidden states -> [b, t] float32 scalars (one linear map)."""
  embed_dim: int
  param_dtype: str = "float32"

  @nn.compact
  def __call__(self, hidden: jax.Array) -> jax.Array:
    # InstructGPT's scale: std 1 / sqrt(d + 1), so the first scores are O(1) whatever the width.
    init = nn.initializers.normal(1.0 / math.sqrt(self.embed_dim + 1))
    dense = nn.Dense(1, dtype=jnp.float32, param_dtype=jnp.dtype(self.param_dtype),
                     kernel_init=partitioned(init, ("embed", None)),
                     bias_init=partitioned(nn.initializers.zeros, (None,)), name="dense")
    return dense(hidden.astype(jnp.float32))[..., 0]


class RewardModel(nn.Module):
  """The language model's body (no output layer) with a ScalarHead: a score at every position;
  a sequence's reward is the score at its last token (`gen_jax.objectives.last_token_values`).

  Params: {"backbone": a Transformer's params without lm_head, "head": the ScalarHead's}.
  """
  config: TransformerConfig

  @nn.compact
  def __call__(self, tokens: jax.Array, positions: jax.Array | None = None,
               segment_ids: jax.Array | None = None) -> jax.Array:
    """[b, t] tokens -> [b, t] float32 scores."""
    hidden = Transformer(self.config, name="backbone")(tokens, positions, segment_ids,
                                                       outputs="hidden")
    return ScalarHead(self.config.embed_dim, self.config.param_dtype, name="head")(hidden)
