"""Speculative decoding keeps the target's distribution: greedy output equals the target's greedy
decoding token for token; sampled output follows the target's exact sequence distribution
(computed from full forward passes), not the draft's."""
import functools
import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import stats as scipy_stats

from gen_jax.models import Transformer, TransformerConfig, unstack_layers
from gen_jax.sampling import (SamplingParams, filter_logits, generate_batch, layer_skip_draft,
                              speculative_generate)

TARGET = TransformerConfig(vocab_size=4, embed_dim=32, num_layers=2, num_heads=4, num_kv_heads=2,
                           head_dim=8, mlp_dim=48, max_seq_len=24)
DRAFT = TransformerConfig(vocab_size=4, embed_dim=16, num_layers=1, num_heads=2, num_kv_heads=1,
                          head_dim=8, mlp_dim=32, max_seq_len=24)


@functools.cache
def _models():
  """(target, target params, draft, draft params), with sharp, clearly different distributions."""
  out = []
  for config, seed in ((TARGET, 0), (DRAFT, 1)):
    model = Transformer(config)
    params = jax.tree.map(lambda x: x.unbox(), model.init(jax.random.key(seed), jnp.zeros((1, 4), jnp.int32))["params"],
                          is_leaf=lambda x: hasattr(x, "unbox"))
    params["lm_head"]["kernel"] = params["lm_head"]["kernel"] * 3
    out += [model, params]
  return tuple(out)


def _reference_accepted(prompt, num_draft_tokens, budget):
  """Greedy drafts accepted for one prompt (no end-of-text), by full forward passes: each round the
  draft continues the kept text greedily by k tokens and the longest prefix agreeing with the
  target's greedy choices is accepted; the target then adds its own next token."""
  target, target_params, draft, draft_params = _models()
  forward = {name: jax.jit(lambda buffer, m=model, p=params: m.apply({"params": p}, buffer))
             for name, model, params in (("target", target, target_params),
                                         ("draft", draft, draft_params))}
  def next_token(name, text):
    buffer = np.zeros((1, 2 * TARGET.max_seq_len), np.int32)  # Fixed shape; causal: tail unused.
    buffer[0, :len(text)] = text
    return int(np.argmax(forward[name](buffer)[0, len(text) - 1]))
  text = list(prompt) + [next_token("target", prompt)]
  accepted = 0
  while len(text) - len(prompt) < budget:
    proposal = list(text)
    for _ in range(num_draft_tokens):
      proposal.append(next_token("draft", proposal))
    n = 0
    while n < num_draft_tokens and next_token("target", text) == proposal[len(text)]:
      text.append(proposal[len(text)])
      n += 1
    accepted += n
    text.append(next_token("target", text))  # The correction, or the bonus token.
  return accepted


@pytest.mark.parametrize("same_draft", [False, True])
def test_greedy_output_is_the_targets_greedy_output(same_draft):
  target, target_params, draft, draft_params = _models()
  if same_draft:  # The target drafting for itself: every draft is accepted.
    draft, draft_params = target, target_params
  prompts = [[1, 3, 0], [2], [0, 1, 1, 2, 3, 3, 0, 1, 2, 3, 0, 0, 1, 2, 3, 1, 0, 2, 2]]
  greedy = SamplingParams(temperature=0.0)
  for eos_id in (-1, 3):
    expected = generate_batch(target, target_params, prompts, max_new_tokens=12, sampling=greedy,
                              rng=jax.random.key(0), eos_id=eos_id, max_seq_len=TARGET.max_seq_len)
    found, stats = speculative_generate(target, target_params, draft, draft_params, prompts,
                                        num_draft_tokens=3, max_new_tokens=12, sampling=greedy,
                                        rng=jax.random.key(0), eos_id=eos_id,
                                        max_seq_len=TARGET.max_seq_len)
    assert found == expected
    assert 0 < stats.drafted and stats.rounds > 0
    if same_draft:
      assert stats.acceptance_rate == 1.0
    elif eos_id == -1:  # The draft's own cache must forget its rejected tokens for these counts.
      assert stats.accepted == sum(_reference_accepted(p, 3, min(12, TARGET.max_seq_len - len(p)))
                                   for p in prompts)
      assert stats.acceptance_rate < 1.0


def _exact_distribution(prompt, length, sampling):
  """{continuation: probability} of the target sampling `length` tokens, from full passes."""
  target, params, _, _ = _models()
  sequences = list(itertools.product(range(TARGET.vocab_size), repeat=length))
  buffer = np.array([list(prompt) + list(s) for s in sequences], np.int32)
  logits = target.apply({"params": params}, buffer)  # [r, t, v]
  probs = np.asarray(jax.nn.softmax(filter_logits(logits.reshape(-1, TARGET.vocab_size), sampling)),
                     np.float64).reshape(logits.shape)
  out = {}
  for row, s in enumerate(sequences):
    out[s] = np.prod([probs[row, len(prompt) + i - 1, t] for i, t in enumerate(s)])
  return out


@pytest.mark.parametrize("sampling", [SamplingParams(temperature=1.0),
                                      SamplingParams(temperature=0.8, top_k=3, top_p=0.9)])
def test_sampled_sequences_follow_the_targets_distribution(sampling):
  target, target_params, draft, draft_params = _models()
  prompt, length, samples = [1, 2], 4, 4000
  found, stats = speculative_generate(target, target_params, draft, draft_params, [prompt] * samples,
                                      num_draft_tokens=2, max_new_tokens=length, sampling=sampling,
                                      rng=jax.random.key(7), eos_id=-1,
                                      max_seq_len=TARGET.max_seq_len)
  assert 0 < stats.acceptance_rate < 1  # Both branches of the rule ran.
  exact = _exact_distribution(prompt, length, sampling)
  counts = {}
  for row in found:
    counts[tuple(row)] = counts.get(tuple(row), 0) + 1
  assert set(counts) <= {s for s, p in exact.items() if p > 0}  # Nothing the target cannot make.
  # Chi-square over the likely sequences, the rest pooled into one cell.
  likely = [s for s, p in exact.items() if p * samples >= 5]
  observed = [counts.get(s, 0) for s in likely]
  expected = [exact[s] * samples for s in likely]
  observed.append(samples - sum(observed))
  expected.append(samples - sum(expected))
  p_value = scipy_stats.chisquare(observed, expected).pvalue
  assert p_value > 1e-3, p_value


@pytest.mark.parametrize("kwargs,message", [
    (dict(num_draft_tokens=0), "num_draft_tokens must be a positive integer"),
    (dict(sampling=SamplingParams(repetition_penalty=1.2)), "does not support SamplingParams.repetition_penalty"),
])
def test_bad_arguments_are_named(kwargs, message):
  target, target_params, draft, draft_params = _models()
  arguments = dict(num_draft_tokens=2, max_new_tokens=3, sampling=SamplingParams(),
                   rng=jax.random.key(0), eos_id=-1, max_seq_len=TARGET.max_seq_len)
  with pytest.raises(ValueError, match=message):
    speculative_generate(target, target_params, draft, draft_params, [[1]], **{**arguments, **kwargs})


def test_a_draft_with_another_vocabulary_is_refused():
  target, target_params, _, _ = _models()
  other = Transformer(TransformerConfig(**{**DRAFT.__dict__, "vocab_size": 5}))
  with pytest.raises(ValueError, match=r"the draft's vocabulary \(5 tokens\) differs from the target's \(4\)"):
    speculative_generate(target, target_params, other, {}, [[1]], num_draft_tokens=2,
                         max_new_tokens=3, sampling=SamplingParams(), rng=jax.random.key(0),
                         eos_id=-1, max_seq_len=TARGET.max_seq_len)


def test_a_layer_skip_draft_is_the_targets_first_layers():
  target, target_params, _, _ = _models()
  draft, draft_params = layer_skip_draft(target, target_params, 1)
  assert draft.config.num_layers == 1 and draft.config.embed_dim == TARGET.embed_dim
  np.testing.assert_array_equal(draft_params["layers"]["mlp"]["wo"]["kernel"],
                                target_params["layers"]["mlp"]["wo"]["kernel"][:1])
  assert draft_params["lm_head"] is target_params["lm_head"]  # Its own head and final norm.
  with pytest.raises(ValueError, match="the draft's layers must be between 1 and the target's 1, got 2"):
    layer_skip_draft(target, target_params, 2)


def test_a_layer_skip_draft_of_separate_layers_drafts_as_the_stacked_one():
  """With scan_layers=False (transformer.unstack_layers) the draft is the first layers_i; it
  computes what the stacked draft does, and speculative greedy still equals greedy."""
  target, target_params, _, _ = _models()
  separate = Transformer(TransformerConfig(**{**TARGET.__dict__, "scan_layers": False}))
  separate_params = unstack_layers(target_params, TARGET.num_layers)
  draft, draft_params = layer_skip_draft(separate, separate_params, 1)
  assert sorted(k for k in draft_params if k.startswith("layers")) == ["layers_0"]
  stacked_draft, stacked_draft_params = layer_skip_draft(target, target_params, 1)
  tokens = jnp.asarray([[1, 3, 0, 2, 2, 1]])
  np.testing.assert_allclose(draft.apply({"params": draft_params}, tokens),
                             stacked_draft.apply({"params": stacked_draft_params}, tokens),
                             atol=1e-5)
  greedy = SamplingParams(temperature=0.0)
  prompts = [[1, 3, 0], [2]]
  found, _ = speculative_generate(separate, separate_params, draft, draft_params, prompts,
                                  num_draft_tokens=3, max_new_tokens=10, sampling=greedy,
                                  rng=jax.random.key(0), eos_id=-1, max_seq_len=TARGET.max_seq_len)
  assert found == generate_batch(target, target_params, prompts, max_new_tokens=10,
                                 sampling=greedy, rng=jax.random.key(0), eos_id=-1,
                                 max_seq_len=TARGET.max_seq_len)
