"""Beam search for the llm family: the n most probable continuations under a length penalty.

Each prompt keeps `beam_width` live hypotheses (prefixes that have not ended) and a pool of the
`beam_width` best finished ones. A step extends every live hypothesis by every token: the
extension by end-of-text is one finished candidate per live hypothesis; of the other extensions the
`beam_width` most probable live on. A hypothesis also finishes when it reaches its token budget
(max_new_tokens or the model's context). Its score is

    score = log p(new tokens) / length ** length_penalty

with length the number of new tokens, end-of-text included (Wu et al., 2016, "Google's Neural
Machine Translation System", use a smoothed form of the same idea; this is Hugging Face's). A
length_penalty > 0 favours longer outputs, < 0 shorter ones, 0 ranks by plain log-probability.

Because end-of-text candidates are taken from every live hypothesis rather than from a top-k of
all candidates, the search is exact whenever the beam holds every live prefix: with
beam_width >= (vocab - 1) ** (max_new_tokens - 1) it equals exhaustive search (tests/sampling).

A prompt stops early when no live hypothesis can still beat the worst of a full pool: log p only
falls as tokens are added, so a live hypothesis's best possible score is its log p divided by the
most favourable length still open to it. That bound makes early stopping exact, not a heuristic.

Beams sit in the batch dimension of one KV cache ([layers, b * beam_width, L, k, h]), which is
reordered by each step's parent beams; the whole search is one jitted `lax.while_loop`.
"""
import dataclasses
import math

import flax.linen as nn
import jax
import jax.numpy as jnp

from gen_jax.sampling.jit import decoding_jit
from gen_jax.sampling.lm import pack_prompts, prefill


@dataclasses.dataclass(frozen=True)
class Hypothesis:
  """One continuation found by beam search.

  tokens: the new tokens, without end-of-text.
  score: log_prob / length ** length_penalty (the ranking).
  log_prob: the summed log-probability of the new tokens, end-of-text included.
  ended: whether it ended with end-of-text (False: it reached its token budget).
  """
  tokens: list[int]
  score: float
  log_prob: float
  ended: bool


def _take_rows(cache: dict, rows: jax.Array) -> dict:
  """The cache of batch rows `rows` [r]: key/value stacks [layers, b, L, k, h] or per-layer
  buffers [b, L, k, h] (the batch 4 axes from the end), segment_ids [b, L]."""
  take = lambda x: jnp.take(x, rows, axis=x.ndim - 4)
  return {"key": jax.tree.map(take, cache["key"]), "value": jax.tree.map(take, cache["value"]),
          "segment_ids": cache["segment_ids"][rows]}


@decoding_jit(static_argnames=("model", "beam_width", "max_new_tokens"))
def _beam_search(model: nn.Module, params, tokens, prompt_lengths, budgets, eos_id, length_penalty,
                 *, beam_width: int, max_new_tokens: int):
  """tokens [b, P] left-padded prompts; prompt_lengths, budgets [b].

  Returns (the finished pool, best first: (tokens [b, W, N], length [b, W], log_prob [b, W],
  score [b, W] (-inf for an empty entry), ended [b, W]), steps [b]: the steps each prompt ran
  before it stopped), W = beam_width, N = max_new_tokens.
  """
  b, prompt_slots = tokens.shape
  w, n, vocab = beam_width, max_new_tokens, model.config.vocab_size
  logits, cache, _ = prefill(model, params, tokens, prompt_lengths, prompt_slots + n)
  beam_rows = jnp.repeat(jnp.arange(b), w)  # [b * W]: every beam starts from its prompt.
  cache = _take_rows(cache, beam_rows)
  next_logits = logits[beam_rows, -1]  # [b * W, v]
  # Only the first beam is live at the start, so the first step does not pick one token W times.
  live_logp = jnp.full((b, w), -jnp.inf).at[:, 0].set(0.0)
  live_tokens = jnp.zeros((b, w, n), jnp.int32)
  pool = (jnp.zeros((b, w, n), jnp.int32), jnp.zeros((b, w), jnp.int32), jnp.zeros((b, w)),
          jnp.full((b, w), -jnp.inf), jnp.zeros((b, w), bool))
  done = jnp.zeros((b,), bool)
  steps = jnp.zeros((b,), jnp.int32)

  def cond(carry):
    step, _, _, _, _, _, done, _ = carry
    return (step < n) & ~jnp.all(done)

  def body(carry):
    step, next_logits, cache, live_logp, live_tokens, pool, done, steps = carry
    steps = jnp.where(done, steps, length := step + 1)
    norm = length.astype(jnp.float32) ** length_penalty
    logp = live_logp[..., None] + jax.nn.log_softmax(next_logits).reshape(b, w, vocab)
    # Finished candidates 1: every live hypothesis followed by end-of-text (none when eos_id is
    # outside the vocabulary, e.g. -1).
    is_eos = jnp.arange(vocab) == eos_id  # [v]
    eos_logp = jnp.max(jnp.where(is_eos, logp, -jnp.inf), axis=-1)  # [b, W]
    eos_tokens = live_tokens.at[:, :, step].set(eos_id)
    # Live candidates: the W most probable other extensions.
    extended = jnp.where(is_eos, -jnp.inf, logp).reshape(b, w * vocab)
    new_logp, flat = jax.lax.top_k(extended, w)  # [b, W]
    parent, token = flat // vocab, (flat % vocab).astype(jnp.int32)
    new_tokens = jnp.take_along_axis(live_tokens, parent[..., None], axis=1).at[:, :, step].set(token)
    # Finished candidates 2: at its budget a live hypothesis ends where it is.
    at_budget = (length >= budgets)[:, None]  # [b, 1]
    budget_logp = jnp.where(at_budget, new_logp, -jnp.inf)
    # The pool keeps the W best of itself and both kinds of candidates (ties keep the older).
    cand_tokens = jnp.concatenate([pool[0], eos_tokens, new_tokens], axis=1)  # [b, 3W, N]
    cand_length = jnp.concatenate([pool[1], jnp.full((b, 2 * w), length, jnp.int32)], axis=1)
    cand_logp = jnp.concatenate([pool[2], eos_logp, budget_logp], axis=1)
    cand_score = jnp.concatenate([pool[3], eos_logp / norm, budget_logp / norm], axis=1)
    cand_ended = jnp.concatenate([pool[4], jnp.ones((b, w), bool), jnp.zeros((b, w), bool)], axis=1)
    score, best = jax.lax.top_k(cand_score, w)
    take = lambda x: jnp.take_along_axis(x, best.reshape(best.shape + (1,) * (x.ndim - 2)), axis=1)  # noqa: E731
    pool = (take(cand_tokens), take(cand_length), take(cand_logp), score, take(cand_ended))
    # Done: the budget is reached, nothing is live, or nothing live can beat the full pool.
    live_logp = jnp.where(at_budget, -jnp.inf, new_logp)
    best_live = jnp.max(live_logp, axis=1)  # [b]
    # The length a live hypothesis can still finish at that flatters it most (its log p <= 0).
    kindest = jnp.where(length_penalty > 0, budgets, length + 1).astype(jnp.float32)
    done = done | jnp.all(live_logp == -jnp.inf, axis=1) | (best_live / kindest ** length_penalty
                                                            <= score[:, -1])
    live_logp = jnp.where(done[:, None], -jnp.inf, live_logp)
    cache = _take_rows(cache, (jnp.arange(b)[:, None] * w + parent).reshape(-1))
    positions = jnp.repeat(prompt_lengths + step, w)[:, None]  # [b * W, 1]
    logits, cache = model.apply({"params": params}, token.reshape(b * w, 1), positions,
                                jnp.ones((b * w, 1), jnp.int32), cache=cache,
                                cache_index=prompt_slots + step)
    return step + 1, logits[:, 0], cache, live_logp, new_tokens, pool, done, steps

  carry = (jnp.int32(0), next_logits, cache, live_logp, live_tokens, pool, done, steps)
  _, _, _, _, _, pool, _, steps = jax.lax.while_loop(cond, body, carry)
  return pool, steps


def beam_search(model: nn.Module, params, prompts: list[list[int]], *, beam_width: int,
                max_new_tokens: int, eos_id: int, max_seq_len: int, length_penalty: float = 1.0,
                num_return: int = 1) -> list[list[Hypothesis]]:
  """The num_return best continuations of each prompt (token ids), best first.

  A prompt gets fewer when fewer exist (e.g. one token of budget and a vocabulary smaller than
  num_return). Raises ValueError naming the bad argument.
  """
  tokens, lengths, budgets, max_new_tokens = pack_prompts(prompts, max_new_tokens, max_seq_len)
  if isinstance(beam_width, bool) or not isinstance(beam_width, int) or beam_width < 1:
    raise ValueError(f"beam_width must be a positive integer, got {beam_width!r}")
  if not 1 <= num_return <= beam_width:
    raise ValueError(f"num_return must be between 1 and beam_width ({beam_width}), got {num_return}")
  if not math.isfinite(length_penalty):
    raise ValueError(f"length_penalty must be a finite number, got {length_penalty}")
  pool, _ = jax.device_get(_beam_search(model, params, jnp.asarray(tokens), jnp.asarray(lengths),
                                     jnp.asarray(budgets), eos_id, jnp.float32(length_penalty),
                                     beam_width=beam_width, max_new_tokens=max_new_tokens))
  out_tokens, length, log_prob, score, ended = pool
  results = []
  for row in range(len(prompts)):
    results.append([
        Hypothesis([int(t) for t in out_tokens[row, i, :length[row, i] - int(ended[row, i])]],
                   float(score[row, i]), float(log_prob[row, i]), bool(ended[row, i]))
        for i in range(num_return) if score[row, i] > -math.inf])
  return results
