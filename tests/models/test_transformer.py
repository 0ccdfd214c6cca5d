"""The LLaMA-style transformer: causality, packing isolation, and a numpy reference forward pass."""
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from gen_jax.models import Transformer, TransformerConfig, stack_layers, unstack_layers
from tests import reference

CFG = TransformerConfig(vocab_size=50, embed_dim=32, num_layers=2, num_heads=4, num_kv_heads=2,
                        head_dim=8, mlp_dim=48, max_seq_len=16, rope_base=10000.0)


def _init(cfg, seed=0):
  model = Transformer(cfg)
  params = jax.tree.map(lambda x: x.unbox() if hasattr(x, "unbox") else x,
                        model.init(jax.random.key(seed), jnp.zeros((1, 8), jnp.int32))["params"],
                        is_leaf=lambda x: hasattr(x, "unbox"))
  return model, params


@pytest.mark.parametrize("tie,sliding_window", [(False, 0), (True, 0), (False, 3)])
def test_logits_equal_numpy_reference(tie, sliding_window):
  cfg = TransformerConfig(**{**CFG.__dict__, "tie_embeddings": tie, "sliding_window": sliding_window})
  model, params = _init(cfg)
  rng = np.random.default_rng(0)
  tokens = rng.integers(0, cfg.vocab_size, (2, 12))
  segment_ids = np.array([[1] * 5 + [2] * 7, [1] * 12])
  positions = np.array([list(range(5)) + list(range(7)), list(range(12))])
  logits = model.apply({"params": params}, jnp.asarray(tokens), jnp.asarray(positions),
                       jnp.asarray(segment_ids))
  for b in range(2):
    expected = reference.transformer_logits(jax.device_get(params), tokens[b], positions[b],
                                            segment_ids[b], cfg)
    np.testing.assert_allclose(np.asarray(logits[b]), expected, atol=2e-4, rtol=2e-4)


def test_changing_a_future_token_never_changes_an_earlier_logit():
  model, params = _init(CFG)
  tokens = jax.random.randint(jax.random.key(1), (1, 12), 0, CFG.vocab_size)
  base = model.apply({"params": params}, tokens)
  for t in (0, 5, 11):
    changed = tokens.at[0, t].set((tokens[0, t] + 1) % CFG.vocab_size)
    out = model.apply({"params": params}, changed)
    np.testing.assert_array_equal(np.asarray(out[0, :t]), np.asarray(base[0, :t]))
    assert not np.allclose(np.asarray(out[0, t]), np.asarray(base[0, t]))


def test_packed_documents_do_not_see_each_other():
  """Changing document 1 leaves document 2's logits unchanged, in the same packed row."""
  model, params = _init(CFG)
  tokens = jax.random.randint(jax.random.key(2), (1, 12), 0, CFG.vocab_size)
  segment_ids = jnp.array([[1] * 6 + [2] * 6])
  positions = jnp.array([list(range(6)) * 2])
  base = model.apply({"params": params}, tokens, positions, segment_ids)
  changed = tokens.at[0, :6].set((tokens[0, :6] + 7) % CFG.vocab_size)
  out = model.apply({"params": params}, changed, positions, segment_ids)
  np.testing.assert_allclose(np.asarray(out[0, 6:]), np.asarray(base[0, 6:]), atol=1e-6)
  # The second document alone, from position 0, gives the same logits as inside the pack.
  alone = model.apply({"params": params}, tokens[:, 6:])
  np.testing.assert_allclose(np.asarray(alone[0]), np.asarray(base[0, 6:]), atol=1e-5)


def test_bfloat16_compute_keeps_float32_params_and_tracks_float32():
  model32, params = _init(CFG)
  model16 = Transformer(TransformerConfig(**{**CFG.__dict__, "dtype": "bfloat16"}))
  assert all(p.dtype == jnp.float32 for p in jax.tree.leaves(params))
  tokens = jax.random.randint(jax.random.key(3), (2, 10), 0, CFG.vocab_size)
  out32 = model32.apply({"params": params}, tokens)
  out16 = model16.apply({"params": params}, tokens)
  assert out16.dtype == jnp.float32  # Logits are returned in float32 for the loss.
  np.testing.assert_allclose(np.asarray(out16), np.asarray(out32), atol=0.1)


def test_every_parameter_has_logical_axis_names():
  boxed = Transformer(CFG).init(jax.random.key(0), jnp.zeros((1, 4), jnp.int32))["params"]
  leaves = jax.tree.leaves(boxed, is_leaf=lambda x: hasattr(x, "names"))
  assert leaves and all(hasattr(x, "names") and len(x.names) == x.value.ndim for x in leaves)
  names = {n for x in leaves for n in x.names}
  assert {"embed", "vocab", "heads", "kv_heads", "head_dim", "mlp", "layers"} <= names


def test_separate_layer_params_compute_what_the_stack_does():
  """scan_layers=False (a Python loop of layers_0, layers_1, ...) on unstack_layers(params)
  equals the scanned model, logits and MoE router statistics; stack_layers undoes the split."""
  cfg = TransformerConfig(**{**CFG.__dict__, "num_experts": 4})
  model = Transformer(cfg)
  params = nn.meta.unbox(jax.jit(model.init)(jax.random.key(0), jnp.zeros((1, 8), jnp.int32))[
      "params"])  # Jitted: eager MoE dispatch takes seconds.
  unscanned = Transformer(TransformerConfig(**{**cfg.__dict__, "scan_layers": False}))
  separate = unstack_layers(params, cfg.num_layers)
  assert "layers" not in separate and sorted(k for k in separate if k.startswith("layers")) == [
      "layers_0", "layers_1"]
  # Its own init makes the same tree, so checkpoints of either layout convert both ways.
  own = jax.eval_shape(unscanned.init, jax.random.key(0), jnp.zeros((1, 8), jnp.int32))["params"]
  assert (jax.tree.map(jnp.shape, separate) ==
          jax.tree.map(lambda x: x.shape, nn.meta.unbox(own)))
  tokens = jax.random.randint(jax.random.key(3), (2, 10), 0, cfg.vocab_size)
  def run(net, net_params):
    return jax.jit(lambda p: net.apply({"params": p}, tokens, return_router_stats=True))(
        net_params)
  logits, stats = run(model, params)
  logits_u, stats_u = run(unscanned, separate)
  np.testing.assert_allclose(np.asarray(logits_u), np.asarray(logits), atol=1e-5)
  for name in stats:
    assert stats_u[name].shape == stats[name].shape == (cfg.num_layers, 2)
    np.testing.assert_allclose(np.asarray(stats_u[name]), np.asarray(stats[name]), atol=1e-6)
  # Boxed params (straight from init, logical axis names attached) unstack to the same arrays.
  boxed = jax.jit(model.init)(jax.random.key(0), jnp.zeros((1, 8), jnp.int32))["params"]
  assert jax.tree.all(jax.tree.map(lambda a, b: bool(jnp.array_equal(a, b)),
                                   unstack_layers(boxed, cfg.num_layers), separate))
  restacked = stack_layers(separate, cfg.num_layers)
  assert jax.tree.all(jax.tree.map(lambda a, b: bool(jnp.array_equal(a, b)), restacked, params))


def test_each_layout_refuses_the_other_ones_params_by_name():
  model, params = _init(CFG)
  unscanned = Transformer(TransformerConfig(**{**CFG.__dict__, "scan_layers": False}))
  tokens = jnp.zeros((1, 4), jnp.int32)
  with pytest.raises(ValueError, match=r"these are stacked: convert them with unstack_layers"):
    unscanned.apply({"params": params}, tokens)
  with pytest.raises(ValueError, match=r"a stack of num_layers=3 layers leads with that axis"):
    unstack_layers(params, 3)
  with pytest.raises(ValueError, match=r"params lack \['layers_0', 'layers_1'\]"):
    stack_layers(params, 2)


def test_separate_layer_params_train_like_the_stack_under_remat():
  """Gradients through scan_layers=False (each block rematerialized) equal the stack's, layer by
  layer: the layout is a compute choice, not a different model."""
  cfg = TransformerConfig(**{**CFG.__dict__, "num_layers": 3, "remat": "dots"})
  model = Transformer(cfg)
  params = nn.meta.unbox(jax.jit(model.init)(jax.random.key(0), jnp.zeros((1, 8), jnp.int32))[
      "params"])
  unscanned = Transformer(TransformerConfig(**{**cfg.__dict__, "scan_layers": False}))
  tokens = jax.random.randint(jax.random.key(4), (2, 8), 0, cfg.vocab_size)
  def loss(net):
    return lambda p: net.apply({"params": p}, tokens).astype(jnp.float32).std()
  grads = jax.jit(jax.grad(loss(model)))(params)
  separate = stack_layers(jax.jit(jax.grad(loss(unscanned)))(unstack_layers(params, 3)), 3)
  for a, b in zip(jax.tree.leaves(separate), jax.tree.leaves(grads)):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=1e-6, rtol=1e-5)
