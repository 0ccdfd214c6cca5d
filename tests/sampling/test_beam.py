"""Beam search: with a beam wide enough to hold every live prefix it equals exhaustive search over
all continuations of a tiny vocabulary, scored by the full forward pass (no cache)."""
import dataclasses
import functools
import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from gen_jax.models import Transformer, TransformerConfig, unstack_layers
from gen_jax.sampling import beam as beam_lib
from gen_jax.sampling import beam_search
from gen_jax.sampling.lm import pack_prompts

CFG = TransformerConfig(vocab_size=5, embed_dim=32, num_layers=2, num_heads=4, num_kv_heads=2,
                        head_dim=8, mlp_dim=48, max_seq_len=16)
EOS = 2


@functools.cache
def _model():
  model = Transformer(CFG)
  params = jax.tree.map(lambda x: x.unbox(), model.init(jax.random.key(1), jnp.zeros((1, 4), jnp.int32))["params"],
                        is_leaf=lambda x: hasattr(x, "unbox"))
  # Sharper distributions than the init's near-uniform ones, so that no two scores nearly tie.
  params["lm_head"]["kernel"] = params["lm_head"]["kernel"] * 8
  return model, params


@functools.cache
def _log_probs():
  """The reference scorer: jitted log-softmax of the full forward pass [r, t] -> [r, t, v]."""
  model, params = _model()
  return jax.jit(lambda tokens: jax.nn.log_softmax(model.apply({"params": params}, tokens)))


def _exhaustive(prompt, budget, eos_id, length_penalty):
  """Every continuation (ending in end-of-text, or reaching the budget), best first, as
  (tokens without end-of-text, score, log p, ended), scored by one full forward pass (no cache)
  over every live prefix."""
  live = [t for t in range(CFG.vocab_size) if t != eos_id]
  prefixes = [p for length in range(budget) for p in itertools.product(live, repeat=length)]
  buffer = np.zeros((len(prefixes), CFG.max_seq_len), np.int32)  # Causal: the tail is unused.
  for row, prefix in enumerate(prefixes):
    buffer[row, :len(prompt) + len(prefix)] = list(prompt) + list(prefix)
  logp = np.asarray(_log_probs()(buffer), np.float64)
  found = []
  for row, prefix in enumerate(prefixes):
    prefix_logp = sum(logp[row, len(prompt) + i - 1, t] for i, t in enumerate(prefix))
    next_logp = logp[row, len(prompt) + len(prefix) - 1]
    length = len(prefix) + 1
    if 0 <= eos_id < CFG.vocab_size:
      total = prefix_logp + next_logp[eos_id]
      found.append((list(prefix), total / length ** length_penalty, total, True))
    if length == budget:
      for t in live:
        total = prefix_logp + next_logp[t]
        found.append((list(prefix) + [t], total / length ** length_penalty, total, False))
  return sorted(found, key=lambda h: -h[1])


@pytest.mark.parametrize("eos_id,length_penalty", [(EOS, 1.0), (EOS, 0.0), (EOS, -0.7), (-1, 1.0)])
def test_a_wide_beam_equals_exhaustive_search(eos_id, length_penalty):
  model, params = _model()
  prompts = [[1, 3], [4, 0, 1, 3, 3, 1, 0, 4, 4, 1, 3, 0, 1, 4]]  # The second row's budget is 2.
  budget = 3
  live = CFG.vocab_size - (eos_id >= 0)
  width = live ** (budget - 1)  # Holds every live prefix: the search is exhaustive.
  found = beam_search(model, params, prompts, beam_width=width, max_new_tokens=budget,
                      eos_id=eos_id, max_seq_len=CFG.max_seq_len, length_penalty=length_penalty,
                      num_return=width)
  for prompt, hypotheses in zip(prompts, found):
    expected = _exhaustive(prompt, min(budget, CFG.max_seq_len - len(prompt)),
                           eos_id, length_penalty)[:width]
    assert [h.tokens for h in hypotheses] == [e[0] for e in expected]
    np.testing.assert_allclose([h.score for h in hypotheses], [e[1] for e in expected], rtol=1e-5)
    np.testing.assert_allclose([h.log_prob for h in hypotheses], [e[2] for e in expected], rtol=1e-5)
    assert [h.ended for h in hypotheses] == [e[3] for e in expected]


def _plain_beam_search(prompt, width, budget, eos_id, length_penalty):
  """The same rules without early stopping or a cache: every step runs to the budget, scoring
  each live beam with the full forward pass. Returns the pool as (tokens, score, ended), best first."""
  live = [((), 0.0)]  # (tokens, log p)
  pool = []
  for step in range(budget):
    buffer = np.zeros((width, CFG.max_seq_len), np.int32)  # Fixed shape: one compile.
    for row, (tokens, _) in enumerate(live):
      buffer[row, :len(prompt) + step] = list(prompt) + list(tokens)
    logp = np.asarray(_log_probs()(buffer), np.float64)
    extended = []
    for row, (tokens, total) in enumerate(live):
      for t in range(CFG.vocab_size):
        new = total + logp[row, len(prompt) + step - 1, t]
        if t == eos_id:
          pool.append((list(tokens), new / (step + 1) ** length_penalty, True))
        else:
          extended.append((tokens + (t,), new))
    live = sorted(extended, key=lambda h: -h[1])[:width]
    if step + 1 == budget:
      pool += [(list(tokens), total / budget ** length_penalty, False) for tokens, total in live]
  return sorted(pool, key=lambda h: -h[1])[:width]


@pytest.mark.parametrize("length_penalty", [0.0, 1.0])
@pytest.mark.parametrize("scan_layers", [True, False], ids=["layer_loop", "separate_layers"])
def test_early_stopping_changes_nothing(length_penalty, scan_layers):
  """A narrow beam over a long budget, where a prompt stops early (end-of-text is token 4, the
  model's likeliest on average), equals the same search run to the end without a cache; with
  separate layers too, whose cache is a buffer per layer that the beams reorder."""
  model, params = _model()
  if not scan_layers:
    model = Transformer(dataclasses.replace(CFG, scan_layers=False))
    params = unstack_layers(params, CFG.num_layers)
  prompts, eos_id, budget = [[1, 3], [0, 4, 4]], 4, 7
  tokens, lengths, budgets, _ = pack_prompts(prompts, budget, CFG.max_seq_len)
  _, steps = beam_lib._beam_search(model, params, tokens, lengths, budgets, eos_id,
                                   jnp.float32(length_penalty), beam_width=3, max_new_tokens=budget)
  assert np.min(steps) < budget  # The bound did stop a prompt before its budget.
  found = beam_search(model, params, prompts, beam_width=3, max_new_tokens=budget, eos_id=eos_id,
                      max_seq_len=CFG.max_seq_len, length_penalty=length_penalty, num_return=3)
  for prompt, hypotheses in zip(prompts, found):
    expected = _plain_beam_search(prompt, 3, budget, eos_id, length_penalty)
    assert [(h.tokens, h.ended) for h in hypotheses] == [(e[0], e[2]) for e in expected]
    np.testing.assert_allclose([h.score for h in hypotheses], [e[1] for e in expected], rtol=1e-5)


@pytest.mark.parametrize("kwargs,message", [
    (dict(beam_width=0), "beam_width must be a positive integer"),
    (dict(beam_width=2, num_return=3), r"num_return must be between 1 and beam_width \(2\)"),
    (dict(beam_width=2, length_penalty=float("nan")), "length_penalty must be a finite number"),
])
def test_bad_arguments_are_named(kwargs, message):
  model, params = _model()
  with pytest.raises(ValueError, match=message):
    beam_search(model, params, [[1]], max_new_tokens=2, eos_id=EOS, max_seq_len=CFG.max_seq_len,
                **kwargs)
