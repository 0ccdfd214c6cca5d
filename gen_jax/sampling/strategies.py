"""Token choice for LM decoding: greedy, temperature, top-k, top-p, min-p and repetition penalty.

Sources: top-k sampling, Fan et al. 2018 ("Hierarchical Neural Story Generation"); top-p (nucleus)
sampling, Holtzman et al. 2020 ("The Curious Case of Neural Text Degeneration"); min-p sampling,
Nguyen et al. 2024 ("Turning Up the Heat: Min-p Sampling for Creative and Coherent LLM Outputs");
the repetition penalty of CTRL, Keskar et al. 2019, in the form Hugging Face's
RepetitionPenaltyLogitsProcessor implements.

Order, as in Hugging Face's default logits-processor list, so that settings tuned there mean the same
here: repetition penalty (raw logits, before anything else) -> temperature -> top-k -> top-p -> min-p.
Temperature comes first so that every truncation acts on the distribution actually sampled; top-p
after top-k measures its mass on the renormalized top-k set. min-p compares each token only with the
most probable one, which every filter keeps, so its own kept set does not depend on where it runs;
running it last means top-k and top-p see the full tempered distribution.

Ties at a cutoff are kept: top-k keeps every token whose logit equals the k-th largest (as Hugging
Face's TopKLogitsWarper, which removes only logits strictly below it), and top-p keeps every token
tied with the least probable token of the nucleus. The kept set is then a function of the logit
values alone, never of token ids or of a sort's order among equal values; it exceeds k tokens (or the
smallest nucleus) only on an exact tie.

All functions are pure and jittable with the SamplingParams static; shapes use b batch, v vocab.
"""
import dataclasses
import math
import numbers

import jax
import jax.numpy as jnp


@dataclasses.dataclass(frozen=True)
class SamplingParams:
  """How to turn next-token logits into a token. Frozen, hence hashable: a static jit argument.

  temperature: 0 is greedy (argmax); > 0 divides the logits before sampling.
  top_k: keep the k most probable tokens; 0 turns it off.
  top_p: keep the smallest set of most probable tokens whose probability sums to >= top_p; 1 is off.
  min_p: keep tokens whose probability is >= min_p times the largest one; 0 is off.
  repetition_penalty: CTRL's penalty on tokens already seen; 1 is off, > 1 discourages repeats.
  """
  temperature: float = 1.0
  top_k: int = 0
  top_p: float = 1.0
  min_p: float = 0.0
  repetition_penalty: float = 1.0

  def validate(self) -> None:
    """Raises ValueError naming the first field out of its range."""
    # Written as `not (in range)` so that NaN fails too.
    if not (math.isfinite(self.temperature) and self.temperature >= 0):
      raise ValueError(f"SamplingParams.temperature must be a finite number >= 0 (0 is greedy), "
                       f"got {self.temperature}")
    if isinstance(self.top_k, bool) or not isinstance(self.top_k, numbers.Integral) or self.top_k < 0:
      raise ValueError(f"SamplingParams.top_k must be an integer >= 0 (0 turns it off), got {self.top_k!r}")
    if not 0 < self.top_p <= 1:
      raise ValueError(f"SamplingParams.top_p must be in (0, 1] (1 turns it off), got {self.top_p}")
    if not 0 <= self.min_p < 1:
      raise ValueError(f"SamplingParams.min_p must be in [0, 1) (0 turns it off), got {self.min_p}")
    if not self.repetition_penalty > 0:
      raise ValueError(f"SamplingParams.repetition_penalty must be > 0 (1 turns it off), "
                       f"got {self.repetition_penalty}")


def apply_repetition_penalty(logits: jax.Array, seen: jax.Array, penalty: float | jax.Array) -> jax.Array:
  """CTRL's repetition penalty: makes every already-seen token less likely when penalty > 1.

  Dividing a positive logit and multiplying a negative one both move it down (Hugging Face's rule;
  CTRL's paper divides only, which would raise a negative logit).

  Args:
    logits: [b, v] float.
    seen: [b, v] bool, True for tokens in the prompt or generated so far.
    penalty: scalar > 0.
  Returns:
    [b, v] float32.
  """
  logits = logits.astype(jnp.float32)
  penalized = jnp.where(logits < 0, logits * penalty, logits / penalty)
  return jnp.where(seen, penalized, logits)


def _top_k(logits: jax.Array, top_k: int) -> jax.Array:
  """[b, v] -> [b, v]: -inf below the k-th largest logit; ties with it are kept."""
  kth_largest = jax.lax.top_k(logits, min(top_k, logits.shape[-1]))[0][..., -1:]  # [b, 1]
  return jnp.where(logits >= kth_largest, logits, -jnp.inf)


def _top_p(logits: jax.Array, top_p: float) -> jax.Array:
  """[b, v] -> [b, v]: -inf outside the nucleus; ties with its least probable token are kept."""
  sorted_logits = jnp.flip(jnp.sort(logits, axis=-1), axis=-1)  # [b, v], most probable first
  probs = jax.nn.softmax(sorted_logits, axis=-1)
  cumulative = jnp.cumsum(probs, axis=-1)
  # The mass of the tokens ranked before each one, shifted rather than `cumulative - probs` so that
  # no rounding moves a token across an exact boundary.
  mass_before = jnp.concatenate([jnp.zeros_like(cumulative[..., :1]), cumulative[..., :-1]], axis=-1)
  # A token belongs to the smallest set reaching top_p iff the tokens before it do not yet reach it;
  # the most probable token always does (mass 0 before it, top_p > 0).
  in_nucleus = mass_before < top_p
  cutoff = jnp.min(jnp.where(in_nucleus, sorted_logits, jnp.inf), axis=-1, keepdims=True)  # [b, 1]
  return jnp.where(logits >= cutoff, logits, -jnp.inf)


def _min_p(logits: jax.Array, min_p: float) -> jax.Array:
  """[b, v] -> [b, v]: -inf where the probability is below min_p times the largest."""
  probs = jax.nn.softmax(logits, axis=-1)
  threshold = min_p * jnp.max(probs, axis=-1, keepdims=True)  # [b, 1]
  return jnp.where(probs >= threshold, logits, -jnp.inf)


def filter_logits(logits: jax.Array, params: SamplingParams) -> jax.Array:
  """The logits to sample from: tempered, with removed tokens at -inf (order in the module docstring).

  The repetition penalty is not applied here: it needs the seen tokens (see choose_tokens).
  Temperature 0 is the greedy limit: only the largest logit (and any tie with it) survives, unscaled.

  Args:
    logits: [b, v] float; computed on in float32.
    params: the sampling settings (static under jit).
  Returns:
    [b, v] float32.
  """
  params.validate()
  logits = logits.astype(jnp.float32)
  if params.temperature == 0:
    return jnp.where(logits == jnp.max(logits, axis=-1, keepdims=True), logits, -jnp.inf)
  logits = logits / params.temperature
  if params.top_k > 0:
    logits = _top_k(logits, params.top_k)
  if params.top_p < 1:
    logits = _top_p(logits, params.top_p)
  if params.min_p > 0:
    logits = _min_p(logits, params.min_p)
  return logits


def choose_tokens(logits: jax.Array, rng: jax.Array, params: SamplingParams,
                  seen: jax.Array | None = None) -> jax.Array:
  """The next token of each row: argmax at temperature 0, else a draw from the filtered logits.

  Every filter keeps the most probable token, so at temperature 0 top-k, top-p and min-p cannot
  change the result and are skipped.

  Args:
    logits: [b, v] float.
    rng: a PRNG key; rows draw independently from it.
    params: the sampling settings (static under jit).
    seen: optional [b, v] bool of tokens already in each sequence, for the repetition penalty.
  Returns:
    [b] int32 token ids.
  """
  params.validate()
  logits = logits.astype(jnp.float32)
  if seen is not None and params.repetition_penalty != 1:
    logits = apply_repetition_penalty(logits, seen, params.repetition_penalty)
  if params.temperature == 0:
    return jnp.argmax(logits, axis=-1).astype(jnp.int32)
  return jax.random.categorical(rng, filter_logits(logits, params), axis=-1).astype(jnp.int32)
