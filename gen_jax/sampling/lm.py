"""Autoregressive decoding for the llm family with a KV cache (Pope et al., 2022, "Efficiently
Scaling Transformer Inference": prefill, then one token per step against cached keys and values).

Prompts of different lengths are left-padded into one [b, P] batch, so every row writes its next
token into the same cache slot: the slot index is one scalar, the cache one fixed-shape array, and
the whole generation (prefill + a `lax.while_loop` of single-token steps) is one jitted function
that never runs Python per token. Padding slots carry segment id 0, which no query attends to, and
each row's RoPE positions count from its first real token, so a padded row computes exactly what it
would alone. Rows stop independently at end-of-text or at their token budget; the loop ends when
every row has stopped.
"""
import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from gen_jax.models.transformer import init_kv_cache
from gen_jax.sampling.strategies import SamplingParams, choose_tokens


@functools.partial(jax.jit, static_argnames=("model", "sampling", "max_new_tokens"))
def _generate(model: nn.Module, params, tokens, prompt_lengths, budgets, rng, eos_id, *,
              sampling: SamplingParams, max_new_tokens: int):
  """tokens [b, P] left-padded prompts; prompt_lengths, budgets [b] (new tokens each row may
  make). Returns (new tokens [b, max_new_tokens], count [b] of tokens before the stop)."""
  b, prompt_slots = tokens.shape
  vocab = model.config.vocab_size
  pad = prompt_slots - prompt_lengths  # [b]
  slots = jnp.arange(prompt_slots)[None]  # [1, P]
  segment_ids = (slots >= pad[:, None]).astype(jnp.int32)
  positions = jnp.maximum(slots - pad[:, None], 0)
  cache = init_kv_cache(model.config, b, prompt_slots + max_new_tokens)
  logits, cache = model.apply({"params": params}, tokens, positions, segment_ids, cache=cache,
                              cache_index=0)
  # Tokens each row has seen (for the repetition penalty); padding indexes past the vocabulary.
  seen = jnp.zeros((b, vocab), bool).at[jnp.arange(b)[:, None],
                                        jnp.where(segment_ids > 0, tokens, vocab)].set(
                                            True, mode="drop")

  def choose(logits, step, seen):
    return choose_tokens(logits, jax.random.fold_in(rng, step), sampling, seen)

  first = choose(logits[:, -1], 0, seen)  # [b]
  out = jnp.zeros((b, max_new_tokens), jnp.int32).at[:, 0].set(first)
  done = (first == eos_id) | (budgets <= 1)
  count = jnp.where(first == eos_id, 0, 1)  # Tokens kept per row (the stop token is not).

  def cond(carry):
    step, _, _, done, _, _ = carry
    return (step < max_new_tokens) & ~jnp.all(done)

  def body(carry):
    step, out, cache, done, count, seen = carry
    previous = out[:, step - 1]
    seen = seen.at[jnp.arange(b), previous].set(True)
    logits, cache = model.apply(
        {"params": params}, previous[:, None], (prompt_lengths + step - 1)[:, None],
        jnp.ones((b, 1), jnp.int32), cache=cache, cache_index=prompt_slots + step - 1)
    token = choose(logits[:, 0], step, seen)
    stops = token == eos_id
    count = jnp.where(done | stops, count, count + 1)
    out = out.at[:, step].set(jnp.where(done, 0, token))
    done = done | stops | (step + 1 >= budgets)
    return step + 1, out, cache, done, count, seen

  _, out, _, _, count, _ = jax.lax.while_loop(cond, body, (1, out, cache, done, count, seen))
  return out, count


def generate_batch(model: nn.Module, params, prompts: list[list[int]], *, max_new_tokens: int,
                   sampling: SamplingParams, rng: jax.Array, eos_id: int,
                   max_seq_len: int) -> list[list[int]]:
  """Continues each prompt (token ids) by up to max_new_tokens tokens, stopping at end-of-text.

  A row also stops where it would pass the model's context (max_seq_len tokens in all), so its
  list may be shorter. Raises ValueError naming the bad argument.
  """
  if not prompts or any(not p for p in prompts):
    raise ValueError("every prompt needs at least one token of text")
  longest = max(len(p) for p in prompts)
  if longest >= max_seq_len:
    raise ValueError(f"the prompt is {longest} tokens but the model's context "
                     f"(model.max_seq_len) is {max_seq_len}; shorten the prompt to at most "
                     f"{max_seq_len - 1} tokens")
  if max_new_tokens < 1:
    raise ValueError(f"max_new_tokens must be positive, got {max_new_tokens}")
  sampling.validate()
  max_new_tokens = min(max_new_tokens, max_seq_len - min(len(p) for p in prompts))
  tokens = np.zeros((len(prompts), longest), np.int32)
  for row, prompt in enumerate(prompts):
    tokens[row, longest - len(prompt):] = prompt
  lengths = np.array([len(p) for p in prompts], np.int32)
  budgets = np.minimum(max_new_tokens, max_seq_len - lengths)
  out, count = jax.device_get(_generate(
      model, params, jnp.asarray(tokens), jnp.asarray(lengths), jnp.asarray(budgets), rng,
      eos_id, sampling=sampling, max_new_tokens=int(max_new_tokens)))
  return [[int(t) for t in out[row, :count[row]]] for row in range(len(prompts))]


def generate(model: nn.Module, params, prompt: list[int], *, max_new_tokens: int,
             temperature: float, rng: jax.Array, eos_id: int, max_seq_len: int) -> list[int]:
  """One prompt, greedy (temperature 0) or sampled: `generate_batch` for a batch of one."""
  return generate_batch(model, params, [prompt], max_new_tokens=max_new_tokens,
                        sampling=SamplingParams(temperature=float(temperature)), rng=rng,
                        eos_id=eos_id, max_seq_len=max_seq_len)[0]
