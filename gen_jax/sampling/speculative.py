"""Speculative decoding (Leviathan et al., 2023, "Fast Inference from Transformers via Speculative
Decoding"; Chen et al., 2023, "Accelerating Large Language Model Decoding with Speculative
Sampling").

Each round a small draft model proposes k tokens one at a time; the target scores all of them in one
forward pass of k + 1 tokens. Draft token j is accepted with probability min(1, p(d_j) / q(d_j))
(p the target's, q the draft's distribution at that position, both after the same temperature and
truncation); at the first rejection the round ends with a token drawn from the residual
norm(max(0, p - q)), and when all k are accepted with a bonus token from the target's next
distribution. Every emitted token is then distributed exactly as the target alone would sample it,
and at temperature 0 (accept iff the draft token is the target's argmax; end with the target's
argmax) the output is the target's greedy output token for token.

Cache layout: rows accept different numbers of tokens, but the caches keep one shared slot index
(as in `gen_jax.sampling.lm`): every round writes its k + 1 tokens at the next k + 1 slots of every
row and then marks the slots of rejected drafts as padding (segment id 0), which no query sees. RoPE
positions count only kept tokens, so a row computes exactly what it would alone. The price is cache
length: prompt + (k + 1) slots per round, at most prompt + max_new_tokens * (k + 1).
"""
import dataclasses

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from gen_jax.models.transformer import Transformer
from gen_jax.sampling.jit import decoding_jit
from gen_jax.sampling.lm import pack_prompts, prefill
from gen_jax.sampling.strategies import SamplingParams, filter_logits


@dataclasses.dataclass(frozen=True)
class SpeculativeStats:
  """drafted: draft tokens proposed; accepted: of those, kept; rounds: target forward passes after
  the prompt (each scores k + 1 tokens)."""
  drafted: int
  accepted: int
  rounds: int

  @property
  def acceptance_rate(self) -> float:
    return self.accepted / max(self.drafted, 1)


def layer_skip_draft(target: Transformer, params, num_layers: int) -> tuple[Transformer, dict]:
  """A draft made of the target itself: its first num_layers layers, then its final norm and head
  (self-speculation by early exit, as in Zhang et al., 2024, "Draft & Verify", and Elhoushi et al.,
  2024, "LayerSkip"). Needs no second checkpoint; the params are views of the target's."""
  if not 1 <= num_layers < target.config.num_layers:
    raise ValueError(f"the draft's layers must be between 1 and the target's "
                     f"{target.config.num_layers - 1}, got {num_layers}")
  config = dataclasses.replace(target.config, num_layers=num_layers)
  if config.scan_layers:
    draft_params = {**params, "layers": jax.tree.map(lambda x: x[:num_layers], params["layers"])}
  else:  # Separate layers (transformer.unstack_layers): the draft keeps the first ones.
    skipped = {f"layers_{i}" for i in range(num_layers, target.config.num_layers)}
    draft_params = {name: value for name, value in params.items() if name not in skipped}
  return Transformer(config), draft_params


def _probs(logits, sampling: SamplingParams):
  """[..., v] logits -> the distribution actually sampled from (float32)."""
  shape = logits.shape
  filtered = filter_logits(logits.reshape(-1, shape[-1]), sampling)
  return jax.nn.softmax(filtered, axis=-1).reshape(shape)


@decoding_jit(static_argnames=("target", "draft", "sampling", "num_draft_tokens",
                              "max_new_tokens"))
def _speculative(target: nn.Module, target_params, draft: nn.Module, draft_params, tokens,
                 prompt_lengths, budgets, rng, eos_id, *, sampling: SamplingParams,
                 num_draft_tokens: int, max_new_tokens: int):
  """tokens [b, P] left-padded prompts; prompt_lengths, budgets [b].

  Returns (out [b, max_new_tokens + k + 1] tokens, count [b] kept, stats [3]: drafted, accepted,
  rounds).
  """
  b, prompt_slots = tokens.shape
  k, greedy = num_draft_tokens, sampling.temperature == 0
  cache_length = prompt_slots + max_new_tokens * (k + 1)
  logits, target_cache, _ = prefill(target, target_params, tokens, prompt_lengths, cache_length)
  _, draft_cache, _ = prefill(draft, draft_params, tokens, prompt_lengths, cache_length)

  def draw(key, probs):  # [b, v] -> [b]
    if greedy:
      return jnp.argmax(probs, axis=-1).astype(jnp.int32)
    return jax.random.categorical(key, jnp.log(probs), axis=-1).astype(jnp.int32)

  first = draw(jax.random.fold_in(rng, 0), _probs(logits[:, -1], sampling))  # [b]
  out = jnp.zeros((b, max_new_tokens + k + 1), jnp.int32).at[:, 0].set(first)
  done = (first == eos_id) | (budgets <= 1)
  count = jnp.where(first == eos_id, 0, 1)
  ones = jnp.ones((b, 1), jnp.int32)

  def cond(carry):
    rounds, done = carry[0], carry[4]
    return (rounds < max_new_tokens) & ~jnp.all(done)

  def body(carry):
    rounds, target_cache, draft_cache, out, done, count, last, stats = carry
    slot = prompt_slots + rounds * (k + 1)  # Where this round's k + 1 tokens go.
    position = prompt_lengths + count - 1  # [b] RoPE position of `last`.
    keys = jax.random.split(jax.random.fold_in(rng, rounds + 1), k + 2)

    # 1. The draft proposes d_1..d_k; it also runs d_k so that its cache holds every token.
    def propose(carry, j):
      cache, token = carry
      logits, cache = draft.apply({"params": draft_params}, token[:, None], (position + j)[:, None],
                                  ones, cache=cache, cache_index=slot + j)
      q = _probs(logits[:, 0], sampling)  # [b, v]
      proposal = draw(keys[j], q)
      return (cache, proposal), (proposal, q)

    (draft_cache, _), (proposals, q) = jax.lax.scan(propose, (draft_cache, last), jnp.arange(k + 1))
    proposals = proposals[:k].T  # [b, k]
    q = jnp.moveaxis(q[:k], 0, 1)  # [b, k, v]: q[:, j] proposed d_{j+1}.

    # 2. The target scores last, d_1..d_k in one pass: p[:, j] is its distribution after d_j.
    scored = jnp.concatenate([last[:, None], proposals], axis=1)  # [b, k + 1]
    logits, target_cache = target.apply(
        {"params": target_params}, scored, position[:, None] + jnp.arange(k + 1)[None],
        jnp.ones((b, k + 1), jnp.int32), cache=target_cache, cache_index=slot)
    p = _probs(logits, sampling)  # [b, k + 1, v]

    # 3. Accept the longest prefix of drafts that pass; n [b] in 0..k.
    p_of_draft = jnp.take_along_axis(p[:, :k], proposals[..., None], axis=-1)[..., 0]  # [b, k]
    if greedy:
      passes = proposals == jnp.argmax(p[:, :k], axis=-1)
    else:
      q_of_draft = jnp.take_along_axis(q, proposals[..., None], axis=-1)[..., 0]
      passes = jax.random.uniform(keys[k], (b, k)) * q_of_draft < p_of_draft  # u < p / q
    n = jnp.sum(jnp.cumprod(passes, axis=1), axis=1)  # [b]

    # 4. The round's last token: from the residual at the first rejection, else the bonus.
    p_n = jnp.take_along_axis(p, n[:, None, None], axis=1)[:, 0]  # [b, v]
    q_ext = jnp.concatenate([q, jnp.zeros_like(q[:, :1])], axis=1)  # The bonus has no q.
    residual = jnp.maximum(p_n - jnp.take_along_axis(q_ext, n[:, None, None], axis=1)[:, 0], 0)
    # A rejection implies residual mass (p(d) < q(d) somewhere); rounding may still zero it.
    residual = jnp.where(jnp.sum(residual, -1, keepdims=True) > 0, residual, p_n)
    final = draw(keys[k + 1], p_n if greedy else residual)

    # 5. Emit d_1..d_n, final; a row ends at end-of-text (not kept) or its budget.
    emitted = jnp.concatenate([proposals, jnp.zeros((b, 1), jnp.int32)], axis=1)
    emitted = jnp.where(jnp.arange(k + 1)[None] == n[:, None], final[:, None], emitted)  # [b, k+1]
    valid = jnp.arange(k + 1)[None] <= n[:, None]
    is_eos = valid & (emitted == eos_id)
    kept = jnp.where(jnp.any(is_eos, axis=1), jnp.argmax(is_eos, axis=1), n + 1)  # [b]
    columns = jnp.where(valid & ~done[:, None], count[:, None] + jnp.arange(k + 1)[None],
                        out.shape[1])  # Out of range: dropped.
    out = out.at[jnp.arange(b)[:, None], columns].set(emitted, mode="drop")
    active = ~done
    new_count = jnp.where(active, jnp.minimum(count + kept, budgets), count)
    done = done | jnp.any(is_eos, axis=1) | (new_count >= budgets)
    stats = stats + jnp.stack([jnp.sum(jnp.where(active, k, 0)), jnp.sum(jnp.where(active, n, 0)),
                               jnp.any(active).astype(jnp.int32)])

    # 6. Rejected drafts' slots become padding in both caches (slot + j holds d_j).
    keep = (jnp.arange(k + 1)[None] <= n[:, None]).astype(jnp.int32)  # [b, k + 1]
    target_cache = {**target_cache, "segment_ids": jax.lax.dynamic_update_slice(
        target_cache["segment_ids"], keep, (0, slot))}
    draft_cache = {**draft_cache, "segment_ids": jax.lax.dynamic_update_slice(
        draft_cache["segment_ids"], keep, (0, slot))}
    return rounds + 1, target_cache, draft_cache, out, done, new_count, final, stats

  carry = (jnp.int32(0), target_cache, draft_cache, out, done, count, first,
           jnp.zeros((3,), jnp.int32))
  _, _, _, out, _, count, _, stats = jax.lax.while_loop(cond, body, carry)
  return out, count, stats


def speculative_generate(target: nn.Module, target_params, draft: nn.Module, draft_params,
                         prompts: list[list[int]], *, num_draft_tokens: int, max_new_tokens: int,
                         sampling: SamplingParams, rng: jax.Array, eos_id: int,
                         max_seq_len: int) -> tuple[list[list[int]], SpeculativeStats]:
  """Continues each prompt as the target would, with the draft proposing num_draft_tokens a round.

  Target and draft share the tokenizer (the same vocabulary). Rows stop at end-of-text (not kept)
  or their budget (max_new_tokens, and the target's context: max_seq_len tokens in all). The
  repetition penalty depends on every earlier token of the row, drafts included, and is refused.
  Returns (the new tokens of each row, SpeculativeStats). Raises ValueError naming the bad argument.
  """
  tokens, lengths, budgets, max_new_tokens = pack_prompts(prompts, max_new_tokens, max_seq_len)
  sampling.validate()
  if sampling.repetition_penalty != 1:
    raise ValueError("speculative decoding does not support SamplingParams.repetition_penalty; "
                     "set it to 1")
  if isinstance(num_draft_tokens, bool) or not isinstance(num_draft_tokens, int) or num_draft_tokens < 1:
    raise ValueError(f"num_draft_tokens must be a positive integer, got {num_draft_tokens!r}")
  if draft.config.vocab_size != target.config.vocab_size:
    raise ValueError(f"the draft's vocabulary ({draft.config.vocab_size} tokens) differs from the "
                     f"target's ({target.config.vocab_size}); they must share a tokenizer")
  out, count, stats = jax.device_get(_speculative(
      target, target_params, draft, draft_params, jnp.asarray(tokens), jnp.asarray(lengths),
      jnp.asarray(budgets), rng, eos_id, sampling=sampling, num_draft_tokens=num_draft_tokens,
      max_new_tokens=max_new_tokens))
  rows = [[int(t) for t in out[row, :count[row]]] for row in range(len(prompts))]
  return rows, SpeculativeStats(*(int(x) for x in np.asarray(stats)))
