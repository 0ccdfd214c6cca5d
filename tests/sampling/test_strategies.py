"""Token-choice strategies: draws follow each filter's definition, computed independently in numpy."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from gen_jax.sampling.strategies import (
  SamplingParams,
  apply_repetition_penalty,
  choose_tokens,
  filter_logits,
)

# Dyadic probabilities are exact in float32, and so are their softmax and running sums (checked in
# test_the_known_distribution_is_exact_in_float32), so top_p = 0.5 or 0.75 lands exactly on a
# cumulative boundary and min_p = 0.25 exactly on the min-p threshold of the third token.
PROBS = np.array([32, 16, 8, 4, 3, 1]) / 64
NUM_DRAWS = 20_000


def _reference_keep(logits, params):
  """[v] float64 logits -> [v] bool, the tokens each filter keeps, by the definitions in order."""
  scaled = logits / params.temperature
  keep = np.ones(len(scaled), bool)
  if params.top_k:
    keep &= scaled >= np.sort(scaled)[::-1][params.top_k - 1]
  if params.top_p < 1:
    probs = np.where(keep, np.exp(scaled - scaled.max()), 0.0)
    probs /= probs.sum()
    order = np.argsort(-probs, kind="stable")
    size = np.searchsorted(np.cumsum(probs[order]), params.top_p) + 1  # Smallest prefix >= top_p.
    keep[order[size:]] = False
  if params.min_p:
    probs = np.where(keep, np.exp(scaled - scaled.max()), 0.0)
    keep &= probs >= params.min_p * probs.max()
  return keep


def _reference_distribution(probs, params):
  """The filtered and renormalized distribution, float64."""
  logits = np.log(probs)
  tempered = np.exp((logits - logits.max()) / params.temperature)
  kept = np.where(_reference_keep(logits, params), tempered, 0.0)
  return kept / kept.sum()


def _frequencies(params, seen=None):
  """Empirical token frequencies over NUM_DRAWS rows that all have the logits log(PROBS)."""
  batch = jnp.broadcast_to(jnp.log(jnp.asarray(PROBS, jnp.float32)), (NUM_DRAWS, len(PROBS)))
  if seen is not None:
    seen = jnp.broadcast_to(jnp.asarray(seen), batch.shape)
  draws = np.asarray(choose_tokens(batch, jax.random.key(0), params, seen))
  return np.bincount(draws, minlength=len(PROBS)) / NUM_DRAWS


def _assert_matches(freq, expected):
  np.testing.assert_array_equal(freq[expected == 0], 0, err_msg="a filtered-out token was drawn")
  # Each frequency is a binomial proportion; allow 5 standard errors (a false alarm ~ 1e-6 per cell).
  tolerance = 5 * np.sqrt(expected * (1 - expected) / NUM_DRAWS)
  assert np.all(np.abs(freq - expected) <= tolerance), f"frequencies {freq} vs expected {expected}"


def test_the_known_distribution_is_exact_in_float32():
  probs = jax.nn.softmax(jnp.log(jnp.asarray(PROBS, jnp.float32)))
  np.testing.assert_array_equal(np.asarray(probs, np.float64), PROBS)
  np.testing.assert_array_equal(np.asarray(jnp.cumsum(probs), np.float64), np.cumsum(PROBS))


@pytest.mark.parametrize("params, expected_kept", [
    (SamplingParams(temperature=1.0), 6),
    (SamplingParams(temperature=0.7), 6),
    (SamplingParams(temperature=1.5), 6),
    (SamplingParams(top_k=2), 2),
    (SamplingParams(top_k=3), 3),
    (SamplingParams(top_p=0.5), 1),    # 0.5 exactly: the first token alone reaches it.
    (SamplingParams(top_p=0.75), 2),   # 0.5 + 0.25 exactly: the third token is left out.
    (SamplingParams(top_p=0.9), 4),
    (SamplingParams(min_p=0.2), 3),    # Threshold 0.1.
    (SamplingParams(min_p=0.25), 3),   # Threshold 0.125 exactly: the third token stays.
    # top-p on the renormalized top-3 set (0.571, 0.286, 0.143) keeps 2; top-p first would keep 3.
    (SamplingParams(top_k=3, top_p=0.7), 2),
    # top-p on the tempered distribution (0.624, 0.232, ...) keeps 2; on the raw one it would keep 3.
    (SamplingParams(temperature=0.7, top_p=0.8), 2),
    (SamplingParams(temperature=1.5, top_k=4, top_p=0.9, min_p=0.3), 3),
])
def test_draws_follow_the_filtered_distribution(params, expected_kept):
  expected = _reference_distribution(PROBS, params)
  assert np.count_nonzero(expected) == expected_kept  # The case tests the boundary it names.
  _assert_matches(_frequencies(params), expected)


def test_filter_keeps_exactly_the_reference_set_on_random_logits():
  logits = np.asarray(jax.random.normal(jax.random.key(3), (32, 200)) * 2, np.float64)
  for params in (SamplingParams(temperature=0.8, top_k=7), SamplingParams(temperature=1.3, top_p=0.6),
                 SamplingParams(min_p=0.05), SamplingParams(temperature=0.5, top_k=50, top_p=0.95, min_p=0.02)):
    filtered = np.asarray(filter_logits(jnp.asarray(logits, jnp.float32), params))
    keep = np.stack([_reference_keep(row, params) for row in logits])
    np.testing.assert_array_equal(np.isfinite(filtered), keep, err_msg=str(params))
    np.testing.assert_allclose(filtered[keep], (logits / params.temperature)[keep], rtol=1e-6)
    assert np.all(filtered[~keep] == -np.inf)


def test_ties_at_the_cutoff_are_kept():
  kept = np.isfinite(filter_logits(jnp.array([[3.0, 1.0, 1.0, 1.0, 0.0]]), SamplingParams(top_k=2)))
  np.testing.assert_array_equal(kept, [[True, True, True, True, False]])
  # Four tokens of probability 0.24 each: the smallest nucleus for 0.3 would be two of them.
  kept = np.isfinite(filter_logits(jnp.array([[0.0, 0.0, 0.0, 0.0, -2.0]]), SamplingParams(top_p=0.3)))
  np.testing.assert_array_equal(kept, [[True, True, True, True, False]])


def test_temperature_zero_is_argmax_whatever_the_truncation():
  logits = jax.random.normal(jax.random.key(1), (64, 1000)) * 3
  expected = np.argmax(np.asarray(logits), axis=-1)
  for params in (SamplingParams(temperature=0.0),
                 SamplingParams(temperature=0.0, top_k=5, top_p=0.3, min_p=0.5)):
    for seed in (0, 1):
      tokens = choose_tokens(logits, jax.random.key(seed), params)
      assert tokens.dtype == jnp.int32 and tokens.shape == (64,)
      np.testing.assert_array_equal(tokens, expected)
  # filter_logits at temperature 0 leaves only the argmax, so sampling from it is greedy too.
  kept = np.isfinite(filter_logits(logits, SamplingParams(temperature=0.0)))
  np.testing.assert_array_equal(kept, np.eye(1000, dtype=bool)[expected])


def test_repetition_penalty_equals_the_formula():
  logits = np.array(jax.random.normal(jax.random.key(4), (8, 30)) * 3, np.float32)
  logits[0, :3] = [0.0, 2.0, -2.0]
  seen = np.array(jax.random.bernoulli(jax.random.key(5), 0.5, (8, 30)))
  seen[0, :3] = True
  assert np.any(seen & (logits > 0)) and np.any(seen & (logits < 0)) and np.any(~seen)
  penalize = jax.jit(apply_repetition_penalty)
  for penalty in (1.3, 0.8):
    expected = np.where(seen, np.where(logits > 0, logits / penalty, logits * penalty), logits)
    np.testing.assert_allclose(penalize(logits, seen, penalty), expected, rtol=1e-6)


def test_choose_tokens_applies_the_penalty_before_choosing():
  logits = jnp.array([[2.0, 1.9, -1.0], [-0.5, -0.55, -3.0]])
  seen = jnp.array([[True, False, False], [True, False, False]])
  greedy = SamplingParams(temperature=0.0, repetition_penalty=1.2)
  np.testing.assert_array_equal(choose_tokens(logits, jax.random.key(0), greedy, seen), [1, 1])
  np.testing.assert_array_equal(choose_tokens(logits, jax.random.key(0), greedy), [0, 0])
  np.testing.assert_array_equal(choose_tokens(logits, jax.random.key(0), SamplingParams(temperature=0.0), seen), [0, 0])
  # Sampling: penalty on the raw logits, then temperature.
  params = SamplingParams(temperature=1.5, repetition_penalty=2.0)
  seen = np.array([True, False, True, False, False, False])
  logits = np.log(PROBS)  # All negative: the seen ones are doubled.
  tempered = np.exp(np.where(seen, 2 * logits, logits) / 1.5)
  _assert_matches(_frequencies(params, seen=seen), tempered / tempered.sum())


@pytest.mark.parametrize("field, value", [
    ("temperature", -0.1), ("temperature", float("nan")), ("temperature", float("inf")),
    ("top_k", -1), ("top_k", 2.5), ("top_p", 0.0), ("top_p", 1.5), ("min_p", -0.1), ("min_p", 1.0),
    ("repetition_penalty", 0.0), ("repetition_penalty", -1.0),
])
def test_validate_names_the_field(field, value):
  params = SamplingParams(**{field: value})
  with pytest.raises(ValueError, match=f"SamplingParams.{field} must be"):
    params.validate()
  with pytest.raises(ValueError, match=f"SamplingParams.{field}"):
    choose_tokens(jnp.zeros((1, 4)), jax.random.key(0), params)


def test_defaults_are_valid_and_hashable():
  SamplingParams().validate()
  assert hash(SamplingParams(top_k=3)) == hash(SamplingParams(top_k=3))


# The tests above run eagerly: op-by-op dispatch reuses compiled ops across the many settings, where
# jit would compile once per setting. This one checks that jit, with the settings static, agrees.
@pytest.mark.parametrize("params", [
    SamplingParams(temperature=0.9, top_k=20, top_p=0.9, min_p=0.05, repetition_penalty=1.3),
    SamplingParams(temperature=0.0, top_k=20, top_p=0.9, min_p=0.05, repetition_penalty=1.3),
])
def test_jit_with_static_params_equals_eager(params):
  logits = jax.random.normal(jax.random.key(6), (16, 50))
  seen = jax.random.bernoulli(jax.random.key(7), 0.3, (16, 50))
  choose = jax.jit(choose_tokens, static_argnames="params")
  np.testing.assert_array_equal(choose(logits, jax.random.key(8), params, seen),
                                choose_tokens(logits, jax.random.key(8), params, seen))
  np.testing.assert_array_equal(jax.jit(filter_logits, static_argnames="params")(logits, params),
                                filter_logits(logits, params))
