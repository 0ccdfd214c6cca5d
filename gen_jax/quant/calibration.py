"""Calibration statistics for GPTQ (Frantar et al., 2023): the Gram matrix X^T X of every
projection's input, accumulated by running the float model on calibration tokens.

One pass of the float model records all layers at once (each `Projection` sows into the `STATS`
collection; under the layer scan the statistics stack on the layer axis). The paper instead feeds
each block the outputs of the blocks already quantized; using the float model's activations
throughout is the simpler, one-pass variant.
"""
import jax
import jax.numpy as jnp
import numpy as np

from gen_jax.quant.projection import STATS


def collect_input_grams(config, params, tokens, batch_size: int = 8) -> dict:
  """{"layers": {"attention": {"query": {"input_gram": [layers, in, in]}, ...}, ...}, ...}: the
  summed X^T X (float32) of each projection's input over every calibration token.

  Args:
    config: the float model's TransformerConfig (weight_bits 0).
    params: its param tree.
    tokens: [n, t] int calibration windows (every token counts: no padding).
    batch_size: windows per forward pass.
  """
  # gen_jax.models imports gen_jax.quant.projection, so the model is imported here, not at the top.
  from gen_jax.models.transformer import Transformer
  if config.weight_bits:
    raise ValueError(f"config.weight_bits: calibration runs the float model, got "
                     f"weight_bits={config.weight_bits}")
  tokens = np.asarray(tokens)
  if tokens.ndim != 2 or tokens.shape[0] == 0 or tokens.shape[1] > config.max_seq_len:
    raise ValueError(f"calibration: expected [n, t] token windows with t <= model.max_seq_len="
                     f"{config.max_seq_len}, got shape {tokens.shape}")
  model = Transformer(config)

  @jax.jit
  def grams(params, batch):
    _, stats = model.apply({"params": params}, batch, mutable=[STATS])
    return stats[STATS]

  total = None
  for start in range(0, tokens.shape[0], batch_size):
    batch_grams = grams(params, jnp.asarray(tokens[start:start + batch_size], jnp.int32))
    total = batch_grams if total is None else jax.tree.map(jnp.add, total, batch_grams)
  return total
