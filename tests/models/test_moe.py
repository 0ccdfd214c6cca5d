"""The mixture-of-experts MLP against a per-token numpy loop: outputs, drops, the load-balancing
loss; causality in the decoder; expert parallelism on a mesh."""
import re

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from gen_jax import parallel
from gen_jax.config.common import DEFAULT_LOGICAL_AXIS_RULES
from gen_jax.models import MoeMlp, Transformer, TransformerConfig, expert_capacity
from gen_jax.models import moe as moe_lib
from tests.conftest import equations, tiny_config
from tests.parallel.test_mesh_equality import _loss_and_grads
from tests.train.test_step import _run_steps

EMBED, MLP, EXPERTS, TOP_K = 8, 16, 4, 2


def _unbox(tree):
  return jax.tree.map(lambda x: x.unbox() if hasattr(x, "unbox") else x, tree,
                      is_leaf=lambda x: hasattr(x, "unbox"))


def _init(module, x, seed=0, router_scale=1.0):
  params = _unbox(module.init(jax.random.key(seed), x))["params"]
  # The default router init is near uniform; a larger scale keeps top-k far from ties, so float32
  # and float64 routing agree.
  params["router"]["kernel"] = params["router"]["kernel"] * router_scale
  return params


def _softmax(z):
  z = np.exp(z - z.max())
  return z / z.sum()


def _reference(params, x, k, capacity, valid=None):
  """Token by token, in order; a token keeps an expert while it has a free slot in the sequence.

  Returns (out [b, t, d], dropped assignments, aux loss [b]).
  """
  p = jax.tree.map(lambda a: np.asarray(a, np.float64), params)
  x = np.asarray(x, np.float64)
  b, t, _ = x.shape
  e = p["router"]["kernel"].shape[1]
  valid = np.ones((b, t), bool) if valid is None else valid
  out, dropped, aux = np.zeros_like(x), 0, np.zeros(b)
  for row in range(b):
    used, routed, prob_sum = np.zeros(e, int), np.zeros(e), np.zeros(e)
    for pos in range(t):
      if not valid[row, pos]:
        continue
      logits = x[row, pos] @ p["router"]["kernel"]
      prob_sum += _softmax(logits)
      chosen = np.argsort(-logits, kind="stable")[:k]
      for gate, expert in zip(_softmax(logits[chosen]), chosen):
        routed[expert] += 1
        if used[expert] == capacity:
          dropped += 1
          continue
        used[expert] += 1
        gate_in = x[row, pos] @ p["wi_gate"]["kernel"][expert]
        up = x[row, pos] @ p["wi_up"]["kernel"][expert]
        hidden = gate_in / (1 + np.exp(-gate_in)) * up
        out[row, pos] += gate * (hidden @ p["wo"]["kernel"][expert])
    n = valid[row].sum()
    aux[row] = e * np.sum(routed / (n * k) * prob_sum / n) if n else 0.0
  return out, dropped, aux


def _inputs(shape=(3, 12), seed=1):
  return jax.random.normal(jax.random.key(seed), shape + (EMBED,))


def test_expert_capacity_formula():
  assert expert_capacity(12, 4, 2, 1.25) == 8  # ceil(1.25 * 12 * 2 / 4) = ceil(7.5)
  assert expert_capacity(12, 4, 2, 0.5) == 3
  assert expert_capacity(12, 4, 2, 4.0) == 12  # Never more slots than tokens.
  assert expert_capacity(12, 4, 2, 0) == 12


@pytest.mark.parametrize("capacity_factor", [0.0, 2.0])
def test_without_drops_output_equals_per_token_reference(capacity_factor):
  x = _inputs()
  moe = MoeMlp(EXPERTS, TOP_K, MLP, capacity_factor)
  params = _init(moe, x, router_scale=5.0)
  out, stats = moe.apply({"params": params}, x)
  expected, dropped, aux = _reference(params, x, TOP_K, capacity=x.shape[1])
  assert dropped == 0
  np.testing.assert_allclose(np.asarray(out), expected, atol=1e-5, rtol=1e-4)
  np.testing.assert_array_equal(np.asarray(stats["dropped"]), 0)
  np.testing.assert_array_equal(np.asarray(stats["assigned"]), x.shape[1] * TOP_K)
  np.testing.assert_allclose(np.asarray(stats["aux_loss"]), aux, rtol=1e-5)


def test_small_capacity_drops_exactly_the_reference_assignments():
  x = _inputs((3, 16), seed=2)
  moe = MoeMlp(EXPERTS, TOP_K, MLP, capacity_factor=0.5)
  capacity = expert_capacity(16, EXPERTS, TOP_K, 0.5)  # 4 slots for 32 assignments per sequence
  params = _init(moe, x, router_scale=5.0)
  out, stats = moe.apply({"params": params}, x)
  expected, dropped, _ = _reference(params, x, TOP_K, capacity)
  undropped, _, _ = _reference(params, x, TOP_K, capacity=16)
  # The test can fail: many assignments drop, and the rows that lose them differ.
  assert dropped >= 10 and not np.allclose(expected, undropped, atol=1e-3)
  np.testing.assert_allclose(np.asarray(out), expected, atol=1e-5, rtol=1e-4)
  assert float(stats["dropped"].sum()) == dropped


@pytest.mark.parametrize("length,capacity_factor", [(1, 1.0), (3, 0.5)])
def test_fewer_choices_than_experts_go_through_their_experts_alone(length, capacity_factor):
  """Decoding a few rows: each choice multiplies by its own expert's matrices, sliced out of the
  stacks (3 dynamic slices a choice, no slots), so only chosen experts are read; the output and
  the drops are the reference's."""
  experts = 8  # 1 or 3 tokens with 2 choices each: fewer choices than experts.
  x = _inputs((1, length), seed=8)
  moe = MoeMlp(experts, TOP_K, MLP, capacity_factor)
  params = _init(moe, x, router_scale=5.0)
  jaxpr = jax.make_jaxpr(lambda p, x: moe.apply({"params": p}, x))(params, x)
  assert len(equations(jaxpr, ("dynamic_slice",))) == 3 * length * TOP_K
  assert not equations(jaxpr, ("gather", "scatter"))
  out, stats = moe.apply({"params": params}, x)
  capacity = expert_capacity(length, experts, TOP_K, capacity_factor)
  expected, dropped, aux = _reference(params, x, TOP_K, capacity)
  assert (dropped > 0) == (length > 1)  # 3 tokens, 1 slot per expert: choices collide.
  np.testing.assert_allclose(np.asarray(out), expected, atol=1e-5, rtol=1e-4)
  assert float(stats["dropped"].sum()) == dropped
  np.testing.assert_allclose(np.asarray(stats["aux_loss"]), aux, rtol=1e-5)


def test_padding_takes_no_slot_and_no_statistic():
  x = _inputs((2, 12), seed=3)
  valid = np.ones((2, 12), bool)
  valid[0, :5] = False  # Padding before real tokens would otherwise take the slots first.
  valid[1, 8:] = False
  moe = MoeMlp(EXPERTS, TOP_K, MLP, capacity_factor=0.75)
  params = _init(moe, x, router_scale=5.0)
  out, stats = moe.apply({"params": params}, x, jnp.asarray(valid))
  expected, dropped, aux = _reference(params, x, TOP_K, expert_capacity(12, EXPERTS, TOP_K, 0.75),
                                      valid)
  np.testing.assert_allclose(np.asarray(out), expected, atol=1e-5, rtol=1e-4)
  np.testing.assert_array_equal(np.asarray(out)[~valid], 0)
  assert float(stats["dropped"].sum()) == dropped
  np.testing.assert_array_equal(np.asarray(stats["assigned"]), valid.sum(1) * TOP_K)
  np.testing.assert_allclose(np.asarray(stats["aux_loss"]), aux, rtol=1e-5)


def test_gradients_equal_autodiff_through_plain_gathers(monkeypatch):
  """Tokens move to their slots and back by gathers whose gradients are gathers too (written by
  hand); they equal autodiff's scatter-adds, with dropped choices, padding and empty slots."""
  x = _inputs((2, 12), seed=6)
  valid = np.ones((2, 12), bool)
  valid[1, 9:] = False  # 18 choices for 20 slots: some slots stay empty.
  moe = MoeMlp(EXPERTS, TOP_K, MLP, capacity_factor=0.75)  # 5 slots per expert and sequence
  params = _init(moe, x, router_scale=5.0)
  weights = jax.random.normal(jax.random.key(7), x.shape)

  def gradients():
    def loss(params, x):
      out, stats = moe.apply({"params": params}, x, jnp.asarray(valid))
      return (out * weights).sum() + stats["aux_loss"].sum(), stats["dropped"]
    return jax.grad(loss, argnums=(0, 1), has_aux=True)(params, x)

  ours, dropped = gradients()
  assert float(dropped[0]) > 0
  monkeypatch.setattr(moe_lib, "_to_slots", moe_lib._to_slots.fun)
  monkeypatch.setattr(moe_lib, "_from_slots", moe_lib._from_slots.fun)
  autodiff, _ = gradients()
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6),
               ours, autodiff)


def _routed_by_construction(preferred: np.ndarray):
  """Tokens whose router logits are 4 for expert preferred[i] and 3 for preferred[i] + 1."""
  t = len(preferred)
  x = np.zeros((1, t, EMBED), np.float32)
  x[0, np.arange(t), preferred % EXPERTS] = 4.0
  x[0, np.arange(t), (preferred + 1) % EXPERTS] = 3.0
  moe = MoeMlp(EXPERTS, TOP_K, MLP, capacity_factor=0.0)
  params = _init(moe, jnp.asarray(x))
  params["router"]["kernel"] = jnp.eye(EMBED, EXPERTS)  # logits = the first EXPERTS features
  _, stats = moe.apply({"params": params}, jnp.asarray(x))
  return float(stats["aux_loss"][0])


def test_load_balancing_loss_is_one_when_balanced_and_larger_when_collapsed():
  balanced = _routed_by_construction(np.arange(16))  # every expert first for 4 tokens, second for 4
  collapsed = _routed_by_construction(np.zeros(16, int))  # every token picks experts 0 and 1
  np.testing.assert_allclose(balanced, 1.0, rtol=1e-6)
  probs = _softmax(np.array([4.0, 3.0, 0.0, 0.0]))
  np.testing.assert_allclose(collapsed, EXPERTS * (0.5 * probs[0] + 0.5 * probs[1]), rtol=1e-6)
  assert collapsed > 1.5


def test_z_loss_is_the_mean_squared_log_partition():
  x = _inputs((2, 6), seed=4)
  moe = MoeMlp(EXPERTS, TOP_K, MLP, capacity_factor=1.0)
  params = _init(moe, x)
  _, stats = moe.apply({"params": params}, x)
  logits = np.asarray(x, np.float64) @ np.asarray(params["router"]["kernel"], np.float64)
  log_z = np.log(np.exp(logits).sum(-1))
  np.testing.assert_allclose(np.asarray(stats["z_loss"]), (log_z ** 2).mean(-1), rtol=1e-5)


def test_moe_decoder_stays_causal_when_tokens_drop():
  """Slots go by token order, so a later token never evicts an earlier one's expert."""
  cfg = TransformerConfig(vocab_size=50, embed_dim=32, num_layers=2, num_heads=4, num_kv_heads=2,
                          head_dim=8, mlp_dim=48, max_seq_len=16, num_experts=4,
                          experts_per_token=2, expert_capacity_factor=0.5)
  model = Transformer(cfg)
  tokens = jax.random.randint(jax.random.key(1), (1, 12), 0, cfg.vocab_size)
  params = _unbox(jax.jit(model.init)(jax.random.key(0), tokens))["params"]
  apply = jax.jit(model.apply, static_argnames="return_router_stats")
  base, stats = apply({"params": params}, tokens, return_router_stats=True)
  assert stats["aux_loss"].shape == (cfg.num_layers, 1)
  assert float(stats["dropped"].sum()) > 0
  for t in range(1, 12):  # First-choice-first priority (GShard's) fails at most of these.
    for delta in (1, 2, 3):
      changed = tokens.at[0, t].set((tokens[0, t] + delta) % cfg.vocab_size)
      out, _ = apply({"params": params}, changed, return_router_stats=True)
      np.testing.assert_array_equal(np.asarray(out[0, :t]), np.asarray(base[0, :t]))


@pytest.mark.parametrize("group_size,mesh", [
    (0, {"mesh.data": 2, "mesh.expert": 4}),
    # Routing windows of 16 tokens with the length split over a sequence axis as well.
    (16, {"mesh.data": 2, "mesh.sequence": 2, "mesh.expert": 2})], ids=["sequences", "windows"])
def test_expert_parallel_mesh_equals_one_device(tmp_path, group_size, mesh):
  """Experts split over the `expert` mesh axis, the batch over `data` (and the length over
  `sequence`)."""
  moe = {"model.num_experts": 4, "model.experts_per_token": 2,
         "model.expert_capacity_factor": 1.0, "model.expert_group_size": group_size}
  one = tiny_config(**moe, **{"mesh.num_devices": 1})
  eight = tiny_config(**moe, **mesh)
  losses1, params1, _ = _run_steps(one, str(tmp_path / "one"))
  losses8, params8, kernel = _run_steps(eight, str(tmp_path / "eight"))
  np.testing.assert_allclose(losses8, losses1, rtol=2e-5)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, atol=2e-5, rtol=1e-4),
               params8, params1)
  # wi_gate [layers, expert, embed, mlp]: each device holds its share of the experts.
  layers, experts, embed, mlp = kernel.shape
  split = mesh["mesh.expert"]
  assert all(s.data.shape == (layers, experts // split, embed, mlp)
             for s in kernel.addressable_shards)


def test_experts_split_over_expert_and_tensor_axes_give_one_devices_gradients(tmp_path):
  """Each expert's hidden units split over `tensor` (the MLP's rule) and the experts over
  `expert`: the first batch's loss and gradients equal one device's."""
  moe = {"model.num_experts": 4, "model.experts_per_token": 2,
         "model.expert_capacity_factor": 1.0}
  loss1, grads1, _ = _loss_and_grads(tiny_config(**moe, **{"mesh.num_devices": 1}),
                                     str(tmp_path / "one"))
  loss8, grads8, state = _loss_and_grads(
      tiny_config(**moe, **{"mesh.data": 2, "mesh.tensor": 2, "mesh.expert": 2}),
      str(tmp_path / "eight"))
  np.testing.assert_allclose(loss8, loss1, rtol=1e-5)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, atol=1e-6, rtol=1e-4), grads8, grads1)
  kernel = state.params["layers"]["mlp"]["wi_gate"]["kernel"]  # [layers, expert, embed, mlp]
  layers, experts, embed, mlp = kernel.shape
  assert all(s.data.shape == (layers, experts // 2, embed, mlp // 2)
             for s in kernel.addressable_shards)


def test_batch_split_over_the_expert_axis_moves_slots_by_all_to_all():
  """GShard's layout: rules that split the batch over the expert axis as well make XLA exchange
  slots with all-to-alls; each device multiplies only its 2 of the 8 experts, and the output and
  statistics are the single-device ones."""
  moe = MoeMlp(8, TOP_K, MLP, capacity_factor=1.0)
  x = _inputs((8, 16), seed=5)
  params = _init(moe, x, router_scale=5.0)
  expected = moe.apply({"params": params}, x)
  rules = tuple(("batch", ("data", "fsdp", "expert")) if name == "batch" else (name, axes)
                for name, axes in DEFAULT_LOGICAL_AXIS_RULES)
  mesh = parallel.make_mesh(tiny_config(**{"mesh.data": 2, "mesh.expert": 4}).mesh)
  experts = NamedSharding(mesh, P("expert"))
  sharded = {name: {"kernel": jax.device_put(params[name]["kernel"], experts)}
             for name in ("wi_gate", "wi_up", "wo")}
  sharded["router"] = params["router"]
  x = jax.device_put(x, NamedSharding(mesh, P(("data", "fsdp", "expert"))))
  with jax.set_mesh(mesh), nn.logical_axis_rules(rules):
    apply = jax.jit(moe.apply)
    hlo = apply.lower({"params": sharded}, x).compile().as_text()
    out = apply({"params": sharded}, x)
  assert hlo.count(" all-to-all(") == 2  # Slots to their experts, and back.
  # The expert matmuls on one device: [2 experts, 4 rows x 4 slots, mlp or embed].
  dots = re.findall(r"= f32(\[[\d,]+\])\S* dot\(", hlo)
  assert sorted(s for s in dots if s.startswith("[2,")) == ["[2,16,16]", "[2,16,16]", "[2,16,8]"]
  jax.tree.map(lambda a, b: np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=1e-5),
               out, expected)


def _grouped_reference(params, x, group, capacity_factor, valid=None):
  """The per-token reference run on each window of `group` tokens as its own sequence (the last
  window padded): (out [b, t, d], dropped assignments)."""
  b, t, d = x.shape
  pad = -t % group
  x = np.pad(np.asarray(x), ((0, 0), (0, pad), (0, 0))).reshape(-1, group, d)
  valid = np.ones((b, t), bool) if valid is None else valid
  valid = np.pad(valid, ((0, 0), (0, pad))).reshape(-1, group)
  capacity = expert_capacity(group, EXPERTS, TOP_K, capacity_factor)
  out, dropped, _ = _reference(params, x, TOP_K, capacity, valid)
  return out.reshape(b, t + pad, d)[:, :t], dropped


@pytest.mark.parametrize("length,group", [(16, 4), (13, 5)])  # 13: the last window is padded.
def test_routing_groups_route_each_window_of_tokens_as_its_own_sequence(length, group):
  x = _inputs((2, length), seed=5)
  valid = np.ones((2, length), bool)
  valid[1, -3:] = False
  moe = MoeMlp(EXPERTS, TOP_K, MLP, capacity_factor=0.5, group_size=group)
  params = _init(moe, x, router_scale=5.0)
  out, stats = moe.apply({"params": params}, x, jnp.asarray(valid))
  expected, dropped = _grouped_reference(params, x, group, 0.5, valid)
  whole_sequence, whole_dropped, _ = _reference(
      params, x, TOP_K, expert_capacity(length, EXPERTS, TOP_K, 0.5), valid)
  # The test can fail: drops happen, and per window they differ from per sequence.
  assert dropped > 0 and dropped != whole_dropped
  assert not np.allclose(expected, whole_sequence, atol=1e-3)
  np.testing.assert_allclose(np.asarray(out), expected, atol=1e-5, rtol=1e-4)
  assert float(stats["dropped"].sum()) == dropped
  np.testing.assert_array_equal(np.asarray(stats["assigned"]), valid.sum(1) * TOP_K)
  # The z-loss stays the mean over a sequence's tokens, however they are grouped.
  logits = np.asarray(x, np.float64) @ np.asarray(params["router"]["kernel"], np.float64)
  log_z = np.log(np.exp(logits).sum(-1))
  np.testing.assert_allclose(np.asarray(stats["z_loss"]),
                             (log_z ** 2 * valid).sum(-1) / valid.sum(-1), rtol=1e-5)


def test_dispatch_memory_is_linear_in_the_length_whatever_the_group():
  """Slots are filled and read back by index, so no [t, e, c] dispatch or combine tensor exists
  (one-hot products held 1024 x 4 x 512 floats per sequence here): a whole sequence as one routing
  group takes no more memory than windows of 64 tokens, and twice the length twice the memory."""
  def temp_bytes(length, group):
    x = jnp.zeros((1, length, EMBED))
    moe = MoeMlp(EXPERTS, TOP_K, MLP, capacity_factor=1.0, group_size=group)
    params = _init(moe, x[:, :8])
    grad = jax.jit(jax.grad(lambda p, x: moe.apply({"params": p}, x)[0].sum(), argnums=(0, 1)))
    return grad.lower(params, x).compile().memory_analysis().temp_size_in_bytes
  whole = temp_bytes(1024, 0)
  assert whole <= 1.1 * temp_bytes(1024, 64), (whole, temp_bytes(1024, 64))
  assert temp_bytes(2048, 0) <= 2.2 * whole, (temp_bytes(2048, 0), whole)


def test_routing_windows_on_a_sequence_mesh_never_gather_the_length():
  """Windows that tile each sequence shard are routed where they lie: the compiled forward and
  backward on a data x sequence mesh hold no all-gather (each device's groups stay its own; with
  whole-sequence groups the length would be gathered), and the output is one device's."""
  moe = MoeMlp(EXPERTS, TOP_K, MLP, capacity_factor=1.0, group_size=16)
  x = _inputs((4, 256), seed=3)
  params = _init(moe, x, router_scale=5.0)
  expected = moe.apply({"params": params}, x)
  mesh = parallel.make_mesh(tiny_config(**{"mesh.data": 2, "mesh.sequence": 4}).mesh)
  x = jax.device_put(x, NamedSharding(mesh, P("data", "sequence")))
  with jax.set_mesh(mesh), nn.logical_axis_rules(parallel.rules_tuple(DEFAULT_LOGICAL_AXIS_RULES)):
    grad = jax.jit(jax.grad(lambda p, x: moe.apply({"params": p}, x)[0].sum()))
    hlo = grad.lower(params, x).compile().as_text()
    whole = MoeMlp(EXPERTS, TOP_K, MLP, capacity_factor=1.0)  # One group per sequence.
    whole_hlo = jax.jit(whole.apply).lower({"params": params}, x).compile().as_text()
    out = jax.jit(moe.apply)({"params": params}, x)
  assert " all-gather(" not in hlo
  assert " all-gather(" in whole_hlo
  jax.tree.map(lambda a, b: np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=1e-5),
               out, expected)
