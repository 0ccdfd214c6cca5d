"""LM decoding: greedy equals a step-by-step argmax of the full forward pass; sampling follows softmax."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from gen_jax.models import Transformer, TransformerConfig
from gen_jax.sampling import choose_token, generate

CFG = TransformerConfig(vocab_size=40, embed_dim=32, num_layers=2, num_heads=4, num_kv_heads=1,
                        head_dim=8, mlp_dim=48, max_seq_len=16)


def _model():
  model = Transformer(CFG)
  params = jax.tree.map(lambda x: x.unbox(), model.init(jax.random.key(0), jnp.zeros((1, 4), jnp.int32))["params"],
                        is_leaf=lambda x: hasattr(x, "unbox"))
  return model, params


def test_greedy_equals_stepwise_argmax_of_the_full_forward_pass():
  model, params = _model()
  prompt = [3, 7, 11]
  out = generate(model, params, prompt, max_new_tokens=8, temperature=0.0, rng=jax.random.key(0),
                 eos_id=-1, max_seq_len=CFG.max_seq_len)
  seq = list(prompt)
  for _ in range(8):
    logits = model.apply({"params": params}, jnp.asarray([seq]))
    seq.append(int(jnp.argmax(logits[0, -1])))
  assert out == seq[len(prompt):]


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


def test_temperature_sampling_matches_the_softmax_distribution():
  logits = jnp.log(jnp.array([0.5, 0.3, 0.15, 0.05]))
  keys = jax.random.split(jax.random.key(0), 20000)
  for temperature in (1.0, 0.5):
    draws = np.asarray(jax.vmap(lambda k: choose_token(logits, temperature, k))(keys))
    expected = np.asarray(jax.nn.softmax(logits / temperature))
    freq = np.bincount(draws, minlength=4) / len(draws)
    # Binomial standard error at 20000 draws is at most 0.0036; allow 4 of them.
    np.testing.assert_allclose(freq, expected, atol=0.015)
  assert int(choose_token(logits, 0.0, keys[0])) == 0
