"""Log-likelihoods of text under a gen_jax language model: continuations given a context (multiple
choice, the lm-eval `loglikelihood` request), whole texts in rolling windows (perplexity and bits
per byte, the `loglikelihood_rolling` request), and greedy generation until stop strings.

Every scored sequence starts with the model's prefix token (its BOS, or end-of-text where it has
none), so the first real token is predicted too. Sequences are scored in batches of fixed shape:
batch_size rows by a power-of-two length bucket (MIN_BUCKET up to max_length), so a task compiles a
handful of programs, not one per request.
"""
import dataclasses
import functools
import math

import jax
import jax.numpy as jnp
import numpy as np

from gen_jax import objectives
from gen_jax.data.packing import power_of_two_bucket
from gen_jax.models import Transformer

MIN_BUCKET = 16


@functools.partial(jax.jit, static_argnames=("net",))
def _token_scores(net: Transformer, params, tokens: jax.Array, segment_ids: jax.Array):
  """tokens [b, t + 1] -> (log p(tokens[:, 1:]) [b, t], whether each is the argmax [b, t])."""
  logits = net.apply({"params": params}, tokens[:, :-1], None, segment_ids[:, :-1])
  targets = tokens[:, 1:]
  greedy = jnp.argmax(logits, axis=-1) == targets
  return objectives.token_log_probs(logits, targets), greedy


@dataclasses.dataclass(frozen=True)
class TextScore:
  """A text's total log-likelihood (nats), its predicted tokens and its UTF-8 bytes."""
  log_likelihood: float
  tokens: int
  bytes: int

  @property
  def perplexity(self) -> float:
    return math.exp(-self.log_likelihood / max(self.tokens, 1))

  @property
  def bits_per_byte(self) -> float:
    return -self.log_likelihood / math.log(2) / max(self.bytes, 1)


class Scorer:
  """A language model (gen_jax.families.llm_sources.Loaded: config, params, tokenizer) that scores
  token spans.

  Args:
    loaded: the model.
    batch_size: rows per jitted call.
    max_length: the most tokens one forward pass sees (default and at most the model's
      max_seq_len); longer inputs keep their last max_length tokens of context.
  """

  def __init__(self, loaded, *, batch_size: int = 8, max_length: int = 0):
    limit = loaded.config.max_seq_len
    if not 0 <= max_length <= limit:
      raise ValueError(f"max_length={max_length}: must be in [1, {limit}] (the model's "
                       "max_seq_len), or 0 for all of it")
    self.loaded, self.tokenizer = loaded, loaded.tokenizer
    self.max_length = max_length or limit
    self.batch_size = batch_size
    self.net = Transformer(dataclasses.replace(loaded.config, max_seq_len=self.max_length))
    self.params = jax.device_put(loaded.params)
    tok = self.tokenizer
    self.prefix_id = tok.bos_id if tok.bos_id is not None else tok.eos_id

  def encode(self, text: str) -> list[int]:
    return self.tokenizer.encode(text, add_special_tokens=False) if text else []

  def bucket(self, length: int) -> int:
    return power_of_two_bucket(length, minimum=MIN_BUCKET, maximum=self.max_length)

  def span_scores(self, rows: list[tuple[list[int], int]]) -> list[tuple[float, bool]]:
    """For each (ids, n): (log p(ids[n:] | ids[:n]), whether greedy decoding picks every one of
    ids[n:]). len(ids) <= max_length + 1 and 1 <= n < len(ids)."""
    for ids, n in rows:
      if not (1 <= n < len(ids) <= self.max_length + 1):
        raise ValueError(f"a row of {len(ids)} tokens scoring from {n}: needs 1 <= n < length "
                         f"<= max_length + 1 = {self.max_length + 1}")
    order = np.argsort([len(ids) for ids, _ in rows], kind="stable")  # Similar lengths together.
    out: list[tuple[float, bool]] = [(0.0, True)] * len(rows)
    for start in range(0, len(rows), self.batch_size):
      chunk = order[start:start + self.batch_size]
      width = self.bucket(max(len(rows[i][0]) for i in chunk) - 1) + 1
      tokens = np.zeros((self.batch_size, width), np.int32)
      segments = np.zeros((self.batch_size, width), np.int32)
      for r, i in enumerate(chunk):
        ids = rows[i][0]
        tokens[r, :len(ids)], segments[r, :len(ids)] = ids, 1
      log_probs, greedy = jax.device_get(_token_scores(self.net, self.params, tokens, segments))
      for r, i in enumerate(chunk):
        ids, n = rows[i]
        span = slice(n - 1, len(ids) - 1)  # Targets ids[n:] sit at positions n-1 .. len-2.
        out[i] = (float(log_probs[r, span].astype(np.float64).sum()), bool(greedy[r, span].all()))
    return out

  def continuation_rows(self, pairs: list[tuple[str, str]]) -> list[tuple[list[int], int]]:
    """(ids, n) rows scoring each continuation after its context, as lm-eval's models do: the
    context's trailing whitespace moves to the continuation, the pair is encoded whole and split
    where the context's own encoding ends; the context is cut from the left where the whole does
    not fit."""
    rows = []
    for context, continuation in pairs:
      spaces = len(context) - len(context.rstrip())
      if spaces:
        context, continuation = context[:-spaces], context[-spaces:] + continuation
      whole = self.encode(context + continuation)
      ids, n = [self.prefix_id] + whole, 1 + len(self.encode(context))
      if n >= len(ids):
        raise ValueError(f"the continuation {continuation!r} adds no token after its context")
      if len(ids) > self.max_length + 1:
        cut = len(ids) - (self.max_length + 1)
        if cut >= n:
          raise ValueError(f"a continuation of {len(ids) - n} tokens does not fit max_length="
                           f"{self.max_length}")
        ids, n = ids[cut:], n - cut
      rows.append((ids, n))
    return rows

  def loglikelihood(self, pairs: list[tuple[str, str]]) -> list[tuple[float, bool]]:
    """(log p(continuation | context), is it the greedy continuation) for each pair."""
    return self.span_scores(self.continuation_rows(pairs))

  def rolling_rows(self, ids: list[int]) -> list[tuple[list[int], int]]:
    """Rows that predict each of ids exactly once (after the prefix token), each with as much
    preceding context as max_length allows."""
    full = [self.prefix_id] + list(ids)
    rows, predicted = [], 0
    while predicted < len(ids):
      end = min(predicted + self.max_length, len(ids))  # Predict ids[predicted:end].
      first = max(0, end + 1 - (self.max_length + 1))
      row = full[first:end + 1]
      rows.append((row, len(row) - (end - predicted)))
      predicted = end
    return rows

  def score_texts(self, texts: list[str]) -> list[TextScore]:
    """Each text's log-likelihood over all of its tokens (rolling windows)."""
    ids = [self.encode(t) for t in texts]
    per_text = [self.rolling_rows(x) for x in ids]
    scores = iter(self.span_scores([row for rows in per_text for row in rows]))
    return [TextScore(sum(next(scores)[0] for _ in rows), len(x), len(t.encode("utf-8")))
            for t, x, rows in zip(texts, ids, per_text)]

  def generate_until(self, prompts: list[str], *, until: list[str], max_new_tokens: int
                     ) -> list[str]:
    """Greedy continuations of each prompt, cut before the first stop string in `until`
    (prompts keep their last max_length - max_new_tokens tokens)."""
    from gen_jax.sampling import SamplingParams, generate_batch
    if not 0 < max_new_tokens < self.max_length:
      raise ValueError(f"max_new_tokens={max_new_tokens}: must be in [1, max_length="
                       f"{self.max_length})")
    keep = self.max_length - max_new_tokens
    ids = [([self.prefix_id] + self.encode(p))[-keep:] for p in prompts]
    stops = tuple(tuple(self.encode(s)) for s in until if s)
    out = []
    for start in range(0, len(ids), self.batch_size):
      batch = ids[start:start + self.batch_size]
      found = generate_batch(self.net, self.params, batch, max_new_tokens=max_new_tokens,
                             sampling=SamplingParams(temperature=0.0), rng=jax.random.key(0),
                             eos_id=self.tokenizer.eos_id, max_seq_len=self.max_length,
                             stop_sequences=tuple(s for s in stops if s))
      for tokens in found:
        text = self.tokenizer.decode(tokens)
        cuts = [text.find(s) for s in until if s and s in text]
        out.append(text[:min(cuts)] if cuts else text)
    return out
