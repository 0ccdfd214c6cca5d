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

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from gen_jax.models.transformer import init_kv_cache
from gen_jax.sampling.jit import decoding_jit
from gen_jax.sampling.strategies import SamplingParams, choose_tokens


def _ends_with_a_stop_sequence(out, step, stops, stop_lengths):
  """[b] bool: whether out[:, :step + 1] ends with one of the stop sequences.

  Args:
    out: [b, n] generated tokens; step: the newest column.
    stops: [m, l] stop sequences right-aligned (left-padded); stop_lengths: [m].
  """
  width = stops.shape[1]
  padded = jnp.pad(out, ((0, 0), (width, 0)), constant_values=-1)  # Before the first token: -1.
  window = jax.lax.dynamic_slice_in_dim(padded, step + 1, width, axis=1)  # [b, l], ends at step.
  counted = jnp.arange(width)[None] >= width - stop_lengths[:, None]  # [m, l]
  same = (window[:, None, :] == stops[None]) | ~counted[None]  # [b, m, l]
  return jnp.any(jnp.all(same, axis=-1), axis=-1)


# The cache's slots are rounded up to a multiple of this: attention kernels work in tiles of keys,
# and over a cache of any other length both XLA:GPU's products and the Pallas flash kernel pad
# the whole cache to whole tiles, a copy of every layer's keys and values at every step
# (Llama-2-7B's shape at 4000 slots: 1.29x the bytes a step must read with the flash kernel, in
# XLA:GPU's compiled program; benchmarks/aot_hlo.py). Slots past the last token are empty
# (segment id 0): no query sees them.
CACHE_SLOT_MULTIPLE = 128


def prefill(model: nn.Module, params, tokens, prompt_lengths, cache_length: int):
  """Runs left-padded prompts through the model into a fresh KV cache.

  Args:
    tokens: [b, P] prompts, right-aligned; prompt_lengths: [b].
    cache_length: the slots needed (P + the tokens still to come); the cache has that many
      rounded up to a multiple of CACHE_SLOT_MULTIPLE.
  Returns:
    (logits [b, P, v], the cache with slots 0..P-1 filled, segment_ids [b, P]: 1 on prompt
    tokens, 0 on padding).
  """
  cache_length = -(-cache_length // CACHE_SLOT_MULTIPLE) * CACHE_SLOT_MULTIPLE
  b, prompt_slots = tokens.shape
  pad = prompt_slots - prompt_lengths  # [b]
  slots = jnp.arange(prompt_slots)[None]  # [1, P]
  segment_ids = (slots >= pad[:, None]).astype(jnp.int32)
  positions = jnp.maximum(slots - pad[:, None], 0)  # RoPE counts from each row's first token.
  cache = init_kv_cache(model.config, b, cache_length)
  logits, cache = model.apply({"params": params}, tokens, positions, segment_ids, cache=cache,
                              cache_index=0)
  return logits, cache, segment_ids


def pack_prompts(prompts: list[list[int]], max_new_tokens: int, max_seq_len: int):
  """Checks the prompts and left-pads them into one batch.

  Returns (tokens [b, P] int32, prompt_lengths [b], budgets [b]: new tokens each row may make
  within max_new_tokens and the context, max_new_tokens cut to the largest budget). Raises
  ValueError naming the bad argument.
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
  tokens = np.zeros((len(prompts), longest), np.int32)
  for row, prompt in enumerate(prompts):
    tokens[row, longest - len(prompt):] = prompt
  lengths = np.array([len(p) for p in prompts], np.int32)
  budgets = np.minimum(max_new_tokens, max_seq_len - lengths).astype(np.int32)
  return tokens, lengths, budgets, int(budgets.max())


@decoding_jit(static_argnames=("model", "sampling", "max_new_tokens",
                              "steps_per_check"))
def _generate(model: nn.Module, params, tokens, prompt_lengths, budgets, rng, eos_id, stops,
              stop_lengths, *, sampling: SamplingParams, max_new_tokens: int,
              steps_per_check: int = 1):
  """tokens [b, P] left-padded prompts; prompt_lengths, budgets [b] (new tokens each row may
  make); stops [m, l], stop_lengths [m] (see `_ends_with_a_stop_sequence`). Returns (new tokens
  [b, max_new_tokens], count [b] of tokens kept: up to a stop sequence, before end-of-text).

  The loop asks whether every row has stopped once per `steps_per_check` tokens: XLA:GPU copies a
  while loop's condition to the host and waits for it every iteration, so the host cannot queue
  the next step's kernels before the last one ends; an inner loop of a fixed trip count needs no
  such wait. Steps past the point where every row stopped (at most steps_per_check - 1) change
  nothing: their tokens are dropped, and the cache slots they write are never read.
  """
  if steps_per_check < 1:
    raise ValueError(f"steps_per_check must be at least 1, got {steps_per_check}")
  b, prompt_slots = tokens.shape
  vocab = model.config.vocab_size
  logits, cache, segment_ids = prefill(model, params, tokens, prompt_lengths,
                                       prompt_slots + max_new_tokens)
  # Tokens each row has seen (for the repetition penalty); padding indexes past the vocabulary.
  seen = jnp.zeros((b, vocab), bool).at[jnp.arange(b)[:, None],
                                        jnp.where(segment_ids > 0, tokens, vocab)].set(
                                            True, mode="drop")

  def choose(logits, step, seen):
    return choose_tokens(logits, jax.random.fold_in(rng, step), sampling, seen)

  first = choose(logits[:, -1], 0, seen)  # [b]
  # -1 marks the columns after a row stopped (the loop ends when every row has).
  out = jnp.full((b, max_new_tokens), -1, jnp.int32).at[:, 0].set(first)
  done = (first == eos_id) | (budgets <= 1) | _ends_with_a_stop_sequence(out, 0, stops,
                                                                         stop_lengths)
  count = jnp.where(first == eos_id, 0, 1)  # Tokens kept per row (the stop token is not).

  def cond(carry):
    step, _, _, done, _, _ = carry
    return (step < max_new_tokens) & ~jnp.all(done)

  def step_once(carry):
    step, out, cache, done, count, seen = carry
    previous = jnp.maximum(out[:, step - 1], 0)  # A stopped row holds -1; it feeds token 0.
    seen = seen.at[jnp.arange(b), previous].set(True)
    logits, cache = model.apply(
        {"params": params}, previous[:, None], (prompt_lengths + step - 1)[:, None],
        jnp.ones((b, 1), jnp.int32), cache=cache, cache_index=prompt_slots + step - 1)
    token = choose(logits[:, 0], step, seen)
    ends = token == eos_id
    count = jnp.where(done | ends, count, count + 1)
    # Past max_new_tokens (only after every row stopped) the column does not exist: dropped.
    out = out.at[:, step].set(jnp.where(done, -1, token), mode="drop")
    done = (done | ends | (step + 1 >= budgets) |
            _ends_with_a_stop_sequence(out, step, stops, stop_lengths))
    return step + 1, out, cache, done, count, seen

  def body(carry):
    if steps_per_check == 1:
      return step_once(carry)
    return jax.lax.fori_loop(0, steps_per_check, lambda _, c: step_once(c), carry)

  _, out, _, _, count, _ = jax.lax.while_loop(cond, body, (1, out, cache, done, count, seen))
  return out, count


def generate_batch(model: nn.Module, params, prompts: list[list[int]], *, max_new_tokens: int,
                   sampling: SamplingParams, rng: jax.Array, eos_id: int, max_seq_len: int,
                   stop_sequences: tuple[tuple[int, ...], ...] = (),
                   steps_per_check: int = 1) -> list[list[int]]:
  """Continues each prompt (token ids) by up to max_new_tokens tokens, stopping at end-of-text.

  A row also stops where it would pass the model's context (max_seq_len tokens in all), so its
  list may be shorter, and right after its new tokens end with one of `stop_sequences` (token ids,
  e.g. a stop string's encoding; the sequence is kept, end-of-text is not). `steps_per_check`
  tokens are made between two checks of whether every row has stopped (see `_generate`: the
  result is the same; only the host's waits change). Raises ValueError naming the bad argument.
  """
  tokens, lengths, budgets, max_new_tokens = pack_prompts(prompts, max_new_tokens, max_seq_len)
  sampling.validate()
  stops, stop_lengths = _stop_arrays(stop_sequences)
  out, count = jax.device_get(_generate(
      model, params, jnp.asarray(tokens), jnp.asarray(lengths), jnp.asarray(budgets), rng,
      eos_id, jnp.asarray(stops), jnp.asarray(stop_lengths), sampling=sampling,
      max_new_tokens=max_new_tokens, steps_per_check=steps_per_check))
  return [[int(t) for t in out[row, :count[row]]] for row in range(len(prompts))]


def _stop_arrays(stop_sequences: tuple[tuple[int, ...], ...]) -> tuple[np.ndarray, np.ndarray]:
  """The stop sequences right-aligned into [m, l] (-2, which matches no token, before each) and
  their lengths [m], as `_ends_with_a_stop_sequence` reads them."""
  if any(not s for s in stop_sequences):
    raise ValueError("stop_sequences must not contain an empty sequence")
  width = max([len(s) for s in stop_sequences], default=1)
  stops = np.full((max(len(stop_sequences), 1), width), -2, np.int32)
  for row, sequence in enumerate(stop_sequences):
    stops[row, width - len(sequence):] = sequence
  return stops, np.array([len(s) for s in stop_sequences] or [width], np.int32)


def sample_continuations(model: nn.Module, params, tokens: jax.Array, prompt_lengths: jax.Array,
                         *, max_new_tokens: int, sampling: SamplingParams, rng: jax.Array,
                         eos_id: int, stop_sequences: tuple[tuple[int, ...], ...] = (),
                         steps_per_check: int = 1) -> jax.Array:
  """Continuations of a fixed-shape batch of left-padded prompts, on device: the same compiled
  function for every batch of the same shape (RL rollouts call it once per step).

  Args:
    tokens: [b, P] prompts, right-aligned; prompt_lengths: [b] (P + max_new_tokens must fit the
      model's context).
    steps_per_check: tokens made between two checks whether every row has stopped (`_generate`).
  Returns:
    [b, max_new_tokens] int32: each row's new tokens, its end-of-text or stop sequence included,
    then -1 once the row has stopped.
  """
  stops, stop_lengths = _stop_arrays(stop_sequences)
  budgets = jnp.full(prompt_lengths.shape, max_new_tokens, jnp.int32)
  out, _ = _generate(model, params, tokens, prompt_lengths, budgets, rng, eos_id,
                     jnp.asarray(stops), jnp.asarray(stop_lengths), sampling=sampling,
                     max_new_tokens=max_new_tokens, steps_per_check=steps_per_check)
  return out


def generate(model: nn.Module, params, prompt: list[int], *, max_new_tokens: int,
             temperature: float, rng: jax.Array, eos_id: int, max_seq_len: int) -> list[int]:
  """One prompt, greedy (temperature 0) or sampled: `generate_batch` for a batch of one."""
  return generate_batch(model, params, [prompt], max_new_tokens=max_new_tokens,
                        sampling=SamplingParams(temperature=float(temperature)), rng=rng,
                        eos_id=eos_id, max_seq_len=max_seq_len)[0]
