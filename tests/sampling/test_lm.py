"""LM decoding with a KV cache: cached logits equal the full forward pass; batched greedy decoding of
prompts of different lengths equals a step-by-step argmax of the full forward pass, row by row."""
import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from gen_jax.models import Transformer, TransformerConfig, init_kv_cache, unstack_layers
from gen_jax.sampling import SamplingParams, generate, generate_batch, sample_continuations
from tests.conftest import kernel_operand_ranks

CFG = TransformerConfig(vocab_size=40, embed_dim=32, num_layers=2, num_heads=4, num_kv_heads=1,
                        head_dim=8, mlp_dim=48, max_seq_len=16)


def _model(config: TransformerConfig = CFG):
  model = Transformer(config)
  params = jax.tree.map(lambda x: x.unbox(), model.init(jax.random.key(0), jnp.zeros((1, 4), jnp.int32))["params"],
                        is_leaf=lambda x: hasattr(x, "unbox"))
  return model, params


def _stepwise_greedy(model, params, prompt, num_tokens):
  """The reference: argmax of the full forward pass, one token at a time (no cache).

  The sequence sits in a fixed [1, max_seq_len] buffer so the forward pass compiles once; the
  model is causal, so the unused slots after it change nothing.
  """
  forward = jax.jit(lambda buffer: model.apply({"params": params}, buffer))
  buffer = np.zeros((1, CFG.max_seq_len), np.int32)
  buffer[0, :len(prompt)] = prompt
  for position in range(len(prompt), len(prompt) + num_tokens):
    buffer[0, position] = int(jnp.argmax(forward(buffer)[0, position - 1]))
  return buffer[0, len(prompt):len(prompt) + num_tokens].tolist()


def test_greedy_equals_stepwise_argmax_of_the_full_forward_pass():
  model, params = _model()
  out = generate(model, params, [3, 7, 11], max_new_tokens=8, temperature=0.0,
                 rng=jax.random.key(0), eos_id=-1, max_seq_len=CFG.max_seq_len)
  assert out == _stepwise_greedy(model, params, [3, 7, 11], 8)


def test_stops_at_end_of_text_and_at_the_context():
  model, params = _model()
  greedy = generate(model, params, [3, 7], max_new_tokens=8, temperature=0.0, rng=jax.random.key(0),
                    eos_id=-1, max_seq_len=CFG.max_seq_len)
  eos = greedy[2]
  stopped = generate(model, params, [3, 7], max_new_tokens=8, temperature=0.0, rng=jax.random.key(0),
                     eos_id=eos, max_seq_len=CFG.max_seq_len)
  assert stopped == greedy[:greedy.index(eos)]
  full = generate(model, params, [3] * 10, max_new_tokens=50, temperature=0.0, rng=jax.random.key(0),
                  eos_id=-1, max_seq_len=CFG.max_seq_len)
  assert len(full) == CFG.max_seq_len - 10


def test_prompt_longer_than_the_context_is_refused():
  model, params = _model()
  with pytest.raises(ValueError, match=r"the prompt is 16 tokens but the model's context \(model.max_seq_len\) is 16"):
    generate(model, params, [1] * 16, max_new_tokens=1, temperature=0.0, rng=jax.random.key(0),
             eos_id=0, max_seq_len=CFG.max_seq_len)


# A mixture of 8 experts without capacity (its forward drops nothing): its decoding steps, 2 rows
# of 2 choices, go through their experts alone (models.moe: fewer choices than experts).
MIXTURE = {"num_experts": 8, "experts_per_token": 2, "expert_capacity_factor": 0.0}


@pytest.mark.parametrize("layout, stacked_cache", [({}, True), ({"scan_unroll": 2}, True),
                                                   ({"scan_layers": False}, False),
                                                   ({"scan_layers": False}, True),
                                                   (MIXTURE, True)],
                         ids=["rolled", "unrolled", "unscanned", "unscanned_stacked_cache", "moe"])
def test_cached_prefill_and_decode_logits_equal_the_full_forward_pass(layout, stacked_cache):
  """The decoder's layer loop rolled, unrolled (model.scan_unroll) or absent (scan_layers=False,
  separate layer params, with its own per-layer cache buffers or the stacked cache) against the
  rolled forward; and a mixture of experts."""
  config = dataclasses.replace(CFG, **{k: v for k, v in layout.items() if k in MIXTURE})
  model, params = _model(config)
  decoder = Transformer(dataclasses.replace(config, **layout))
  decoder_params = params if decoder.config.scan_layers else unstack_layers(params, CFG.num_layers)
  rng = np.random.default_rng(0)
  seqs = [rng.integers(0, CFG.vocab_size, 9).tolist(), rng.integers(0, CFG.vocab_size, 12).tolist()]
  prompt_lengths, slots = [4, 7], 7
  tokens, segments, positions = (np.zeros((2, slots), np.int32) for _ in range(3))
  for row, (seq, n) in enumerate(zip(seqs, prompt_lengths)):  # Left-padded prompts.
    tokens[row, slots - n:], segments[row, slots - n:] = seq[:n], 1
    positions[row, slots - n:] = np.arange(n)
  cache = init_kv_cache(config if stacked_cache else decoder.config, 2, slots + 3)
  assert isinstance(cache["key"], tuple) == (not stacked_cache)
  logits, cache = decoder.apply({"params": decoder_params}, tokens, positions, segments,
                                cache=cache, cache_index=0)
  full = [np.asarray(model.apply({"params": params}, jnp.asarray([seq]))[0]) for seq in seqs]
  for row, n in enumerate(prompt_lengths):
    np.testing.assert_allclose(logits[row, slots - n:], full[row][:n], atol=2e-5)
  for step in range(2):  # One token per row per step, at a shared cache slot.
    next_tokens = np.array([[seq[n + step]] for seq, n in zip(seqs, prompt_lengths)], np.int32)
    next_positions = np.array([[n + step] for n in prompt_lengths], np.int32)
    logits, cache = decoder.apply({"params": decoder_params}, next_tokens, next_positions,
                                  np.ones((2, 1), np.int32), cache=cache, cache_index=slots + step)
    for row, n in enumerate(prompt_lengths):
      np.testing.assert_allclose(logits[row, 0], full[row][n + step], atol=2e-5)


@pytest.mark.parametrize("scan_layers", [True, False], ids=["scanned", "unscanned"])
def test_batched_prompts_of_different_lengths_decode_as_if_alone(scan_layers):
  model, params = _model()
  prompts = [[3, 7, 11], [5], [2, 9, 4, 4, 8, 1]]
  greedy = SamplingParams(temperature=0.0)
  decoder = Transformer(dataclasses.replace(CFG, scan_layers=scan_layers))
  batched = generate_batch(decoder, params if scan_layers else unstack_layers(params, CFG.num_layers),
                           prompts, max_new_tokens=6, sampling=greedy,
                           rng=jax.random.key(0), eos_id=-1, max_seq_len=CFG.max_seq_len)
  for prompt, out in zip(prompts, batched):
    assert out == _stepwise_greedy(model, params, prompt, 6)


def test_rows_stop_on_their_own_end_of_text_and_budget():
  model, params = _model()
  greedy = SamplingParams(temperature=0.0)
  prompts = [[3, 7], [5, 1, 2, 6, 6, 6, 6, 6, 6, 6, 6, 6, 6]]  # The second has 3 slots of context.
  free = generate_batch(model, params, prompts, max_new_tokens=8, sampling=greedy,
                        rng=jax.random.key(0), eos_id=-1, max_seq_len=CFG.max_seq_len)
  assert [len(o) for o in free] == [8, 3]
  eos = free[0][2]
  stopped = generate_batch(model, params, prompts, max_new_tokens=8, sampling=greedy,
                           rng=jax.random.key(0), eos_id=eos, max_seq_len=CFG.max_seq_len)
  assert stopped[0] == free[0][:free[0].index(eos)]
  assert stopped[1] == (free[1][:free[1].index(eos)] if eos in free[1] else free[1])


def test_rows_stop_right_after_a_stop_sequence():
  model, params = _model()
  greedy = SamplingParams(temperature=0.0)
  prompts = [[3, 7], [5, 1, 2]]
  free = generate_batch(model, params, prompts, max_new_tokens=8, sampling=greedy,
                        rng=jax.random.key(0), eos_id=-1, max_seq_len=CFG.max_seq_len)
  stop = tuple(free[0][2:4])  # Two tokens the first row makes at its 3rd and 4th steps.
  stopped = generate_batch(model, params, prompts, max_new_tokens=8, sampling=greedy,
                           rng=jax.random.key(0), eos_id=-1, max_seq_len=CFG.max_seq_len,
                           stop_sequences=((39, 39, 39), stop))
  for row in range(2):  # Each row ends right after the first occurrence of the stop pair.
    ends = [i + 2 for i in range(len(free[row]) - 1) if tuple(free[row][i:i + 2]) == stop]
    assert stopped[row] == (free[row][:ends[0]] if ends else free[row])
  assert stopped[0] == free[0][:4]
  with pytest.raises(ValueError, match="empty sequence"):
    generate_batch(model, params, prompts, max_new_tokens=2, sampling=greedy, rng=jax.random.key(0),
                   eos_id=-1, max_seq_len=CFG.max_seq_len, stop_sequences=((),))


def test_fixed_shape_continuations_mark_every_column_after_a_stop_with_minus_one():
  """sample_continuations (RL rollouts) returns whole rows: once every row has stopped the loop
  ends early, and the columns it never reached must read -1, never a real token id such as 0."""
  model, params = _model()
  prompts = jnp.asarray([[5, 6, 7], [0, 8, 9]], jnp.int32)  # Right-aligned; row 1 has 2 tokens.
  lengths = jnp.asarray([3, 2], jnp.int32)
  firsts = [generate(model, params, [int(t) for t in prompts[row, 3 - int(lengths[row]):]],
                     max_new_tokens=1, temperature=0.0, rng=jax.random.key(0), eos_id=-1,
                     max_seq_len=CFG.max_seq_len)[0] for row in range(2)]
  out = np.asarray(sample_continuations(
      model, params, prompts, lengths, max_new_tokens=6, sampling=SamplingParams(temperature=0.0),
      rng=jax.random.key(0), eos_id=-1, stop_sequences=tuple((t,) for t in set(firsts))))
  np.testing.assert_array_equal(out[:, 0], firsts)  # Each row stops at its first token, kept.
  np.testing.assert_array_equal(out[:, 1:], -1)


@pytest.mark.parametrize("steps_per_check", [3, 5])
def test_checking_for_stopped_rows_every_few_steps_changes_no_token(steps_per_check):
  """Rows that run to max_new_tokens (8: the last check overruns it), to the context (3 slots
  left), to end-of-text and to a stop sequence, greedy and sampled: the same tokens as checking
  every step, and -1 after each stop in the fixed-shape continuations."""
  model, params = _model()
  prompts = [[3, 7], [5, 1, 2, 6, 6, 6, 6, 6, 6, 6, 6, 6, 6], [4]]
  for sampling in (SamplingParams(temperature=0.0), SamplingParams(temperature=1.0, top_k=8)):
    run = lambda k, **kw: generate_batch(model, params, prompts, max_new_tokens=8,
                                         sampling=sampling, rng=jax.random.key(3),
                                         max_seq_len=CFG.max_seq_len, steps_per_check=k, **kw)
    free = run(1, eos_id=-1)
    assert [len(o) for o in free] == [8, 3, 8]
    assert run(steps_per_check, eos_id=-1) == free
    assert run(steps_per_check, eos_id=free[0][1]) == run(1, eos_id=free[0][1])
    stop = ((free[2][4], free[2][5]),)
    assert (run(steps_per_check, eos_id=-1, stop_sequences=stop) ==
            run(1, eos_id=-1, stop_sequences=stop))
  tokens, lengths = jnp.asarray([[5, 6, 7], [0, 8, 9]], jnp.int32), jnp.asarray([3, 2], jnp.int32)
  continue_ = lambda k, eos: np.asarray(sample_continuations(
      model, params, tokens, lengths, max_new_tokens=7, sampling=SamplingParams(temperature=0.0),
      rng=jax.random.key(0), eos_id=eos, steps_per_check=k))
  free = continue_(1, -1)
  assert (free >= 0).all()
  np.testing.assert_array_equal(continue_(steps_per_check, -1), free)
  eos = int(free[1, 2])
  np.testing.assert_array_equal(continue_(steps_per_check, eos), continue_(1, eos))
  assert (continue_(1, eos) == -1).any()


def test_steps_per_check_below_one_is_refused():
  model, params = _model()
  with pytest.raises(ValueError, match="steps_per_check must be at least 1, got 0"):
    generate_batch(model, params, [[3]], max_new_tokens=2, sampling=SamplingParams(temperature=0.0),
                   rng=jax.random.key(0), eos_id=-1, max_seq_len=CFG.max_seq_len,
                   steps_per_check=0)


def test_the_layer_loop_refuses_a_cache_of_per_layer_buffers():
  model, params = _model()
  cache = init_kv_cache(dataclasses.replace(CFG, scan_layers=False), 1, 8)
  with pytest.raises(ValueError, match="stacked KV cache"):
    model.apply({"params": params}, jnp.ones((1, 2), jnp.int32), jnp.zeros((1, 2), jnp.int32),
                jnp.ones((1, 2), jnp.int32), cache=cache, cache_index=0)


def test_the_layer_loop_decodes_with_the_flash_kernel_reading_the_stacked_cache_in_place():
  """attention_impl=pallas (the kernel interpreted here) in the rolled loop: each layer's keys and
  values are read in the stacked cache, not sliced out; greedy tokens equal XLA's."""
  config = dataclasses.replace(CFG, head_dim=16, max_seq_len=32)
  model = Transformer(config)
  params = jax.tree.map(lambda x: x.unbox(), model.init(jax.random.key(0), jnp.zeros((1, 4), jnp.int32))["params"],
                        is_leaf=lambda x: hasattr(x, "unbox"))
  prompts = [[3, 7, 11], [5, 2, 9, 4, 4, 8, 1]]
  run = lambda impl: generate_batch(
      Transformer(dataclasses.replace(config, attention_impl=impl)), params, prompts,
      max_new_tokens=5, sampling=SamplingParams(temperature=0.0), rng=jax.random.key(0),
      eos_id=-1, max_seq_len=config.max_seq_len)
  assert run("pallas") == run("xla")
  cache = init_kv_cache(config, 1, 16)
  step = jax.make_jaxpr(lambda p, c: Transformer(dataclasses.replace(config, attention_impl="pallas")).apply(
      {"params": p}, jnp.ones((1, 1), jnp.int32), jnp.ones((1, 1), jnp.int32),
      jnp.ones((1, 1), jnp.int32), cache=c, cache_index=3))(params, cache)
  assert 5 in kernel_operand_ranks(step.jaxpr)  # The kernel takes the whole [layers, ...] stack.
