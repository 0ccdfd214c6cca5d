"""Autoregressive decoding for the llm family: greedy and temperature sampling.

The whole loop is one jitted `lax.while_loop` over a fixed [1, max_seq_len] buffer, so decoding
compiles once per model and never runs Python per token. Each step re-runs the full forward pass;
KV-cache decoding replaces that in the inference work.
"""
import functools

import flax.linen as nn
import jax
import jax.numpy as jnp


def choose_token(logits: jax.Array, temperature: float, rng: jax.Array) -> jax.Array:
  """Greedy at temperature 0, else a sample from softmax(logits / temperature). [..., v] -> [...]."""
  if temperature == 0:
    return jnp.argmax(logits, axis=-1)
  return jax.random.categorical(rng, logits / temperature, axis=-1)


@functools.partial(jax.jit, static_argnames=("model", "temperature", "max_new_tokens"))
def _decode(model: nn.Module, params, buffer, prompt_len, rng, eos_id, *, temperature: float,
            max_new_tokens: int):
  """Fills buffer [1, L] after position prompt_len; returns (buffer, end position)."""
  limit = jnp.minimum(prompt_len + max_new_tokens, buffer.shape[1])

  def cond(carry):
    buf, pos, done = carry
    return (pos < limit) & ~done

  def body(carry):
    buf, pos, _ = carry
    logits = model.apply({"params": params}, buf)[0, pos - 1]  # [v]; causal: later slots ignored
    token = choose_token(logits, temperature, jax.random.fold_in(rng, pos))
    buf = buf.at[0, pos].set(token)
    return buf, pos + 1, token == eos_id

  buffer, end, done = jax.lax.while_loop(cond, body, (buffer, prompt_len, jnp.array(False)))
  return buffer, jnp.where(done, end - 1, end)  # Drop the end-of-text token itself.


def generate(model: nn.Module, params, prompt: list[int], *, max_new_tokens: int,
             temperature: float, rng: jax.Array, eos_id: int, max_seq_len: int) -> list[int]:
  """Continues `prompt` (token ids) by up to max_new_tokens tokens, stopping at end-of-text.

  Raises ValueError if the prompt leaves no room in the model's context (max_seq_len tokens).
  New tokens beyond the context are not generated; the returned list is then shorter.
  """
  if not prompt:
    raise ValueError("the prompt is empty; give at least one token of text")
  if len(prompt) >= max_seq_len:
    raise ValueError(f"the prompt is {len(prompt)} tokens but the model's context "
                     f"(model.max_seq_len) is {max_seq_len}; shorten the prompt to at most "
                     f"{max_seq_len - 1} tokens")
  if temperature < 0:
    raise ValueError(f"temperature must be >= 0, got {temperature}")
  buffer = jnp.zeros((1, max_seq_len), jnp.int32).at[0, :len(prompt)].set(jnp.asarray(prompt))
  buffer, end = _decode(model, params, buffer, len(prompt), rng, eos_id,
                        temperature=float(temperature), max_new_tokens=int(max_new_tokens))
  return [int(t) for t in jax.device_get(buffer[0, len(prompt):int(end)])]
