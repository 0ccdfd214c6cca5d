"""Mixture-of-experts MLP: top-k routing of each token to SwiGLU experts with a fixed capacity.

The sparsely-gated mixture of experts of Shazeer et al. (2017), "Outrageously Large Neural
Networks", with the expert capacity and slots of GShard (Lepikhin et al., 2020) and the
load-balancing loss of the Switch Transformer (Fedus et al., 2021, eq. 4). The router
z-loss is ST-MoE's (Zoph et al., 2022). Gates follow Mixtral (Jiang et al., 2024): a softmax over
the router logits of the k chosen experts, so a token's gates sum to 1 (with k = 1 the gate is 1
and the router learns from the auxiliary losses alone).

Letters in einsums and shapes: b batch, t length, d embed, f mlp, e expert, c capacity (slots
per expert), k choice (the rank among a token's top-k), m an expert's rows (b * c). Inside
MoeMlp, between the routing groups' reshape and its undoing, b counts groups and t their tokens.

Routing groups are sequences, or consecutive windows of `group_size` tokens of a sequence (GShard's
groups; the last window of a sequence whose length it does not divide is padded): each group routes
its own tokens into c = min(g, ceil(capacity_factor * g * k / e)) slots per expert, g its length, so
results do not depend on how the batch is split over devices or microbatches. Slots go by token
order: a token keeps an expert unless earlier tokens of its group already fill it. GShard and Switch
give every token's first choice priority over all second choices, but in a decoder that lets a later
token evict an earlier token's second choice, so a logit would depend on future tokens (a leak in
training, and a mismatch with decoding); with token order the MoE stays causal. Assignments past
capacity are dropped: that expert adds nothing to the token (the residual stream carries it), the
token's other gates are not renormalized, and the drop is counted in the statistics. Padding (valid
== False) is routed nowhere: it takes no slot and is left out of every statistic.

Expert parallelism comes from sharding annotations: the expert weights [e, d, f] carry the logical
axis `expert`, and the slots are constrained twice, by tokens [b, e, c, d] (the batch split as in
the rest of the model) and by experts [e, b, c, d] (the experts split over the `expert` mesh axis),
so each device runs only its own experts and XLA inserts the collectives between the layouts:
all-to-alls, since the default logical rules split the batch over the expert axis too (GShard's
layout); rules that keep the batch off that axis get a local slice going in and an all-gather over
the expert axis coming out.

Tokens go to their slots and come back by index (gathers, whose gradients are gathers too), not
by GShard's one-hot dispatch and combine products: those cost 2 * g * e * c * d FLOPs each per
group (together, with g = 2048 tokens, k = 2 and capacity factor 1.25, more than the experts'
own products at d = 512, f = 1024) and held [groups, g, e, c] floats, quadratic in the group's
length. So memory and FLOPs are linear in the length whatever the group size (benchmarks/moe.py).
Smaller groups balance load more locally: a burst of tokens preferring one expert overflows a
window's capacity sooner than a whole sequence's.

With fewer token choices than experts (decoding a few rows; experts not split over devices) the
slots would be mostly empty and every expert's weights read for them: each choice goes through its
own expert's matrices instead (`_chosen_experts`), with the same gates, drops and statistics.
"""
import math
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax.sharding import PartitionSpec as P

from gen_jax.models.layers import partitioned
from gen_jax.parallel import context as parallel_context
from gen_jax.quant import formats
from gen_jax.quant.matmul import int_matmul

Dtype = Any

# The statistics MoeMlp returns beside its output, each [b] float32 (per sequence):
#   aux_loss  Switch load-balancing loss, e * sum_e(fraction of assignments to e * mean prob of e)
#             in each routing group, averaged over a sequence's groups weighted by their tokens;
#             1 under perfectly balanced routing, up to e when every token picks the same experts.
#   z_loss    ST-MoE router z-loss, the mean over tokens of logsumexp(router logits)^2.
#   dropped   (token, expert) assignments dropped for lack of capacity.
#   assigned  (token, expert) assignments made: k per non-padding token.
ROUTER_STATS = ("aux_loss", "z_loss", "dropped", "assigned")


def expert_capacity(length: int, num_experts: int, experts_per_token: int,
                    capacity_factor: float) -> int:
  """Slots per expert for a group of `length` tokens; capacity_factor 0 means room for all."""
  if capacity_factor == 0:
    return length  # A token picks an expert at most once, so `length` slots never overflow.
  return min(length, math.ceil(capacity_factor * length * experts_per_token / num_experts))


def _top_k_one_hot(logits: jax.Array, k: int) -> jax.Array:
  """[..., e] -> [..., k, e] float32: one-hot rows of the k largest logits, largest first.

  As k argmaxes rather than lax.top_k, whose TopK call XLA's partitioner runs on the whole batch
  gathered onto every device; argmax stays on each device's shard. Ties go to the lower index.
  """
  rows = []
  for _ in range(k):
    rows.append(jax.nn.one_hot(jnp.argmax(logits, axis=-1), logits.shape[-1]))
    logits = jnp.where(rows[-1] > 0, -jnp.inf, logits)
  return jnp.stack(rows, axis=-2)


def _rows(x: jax.Array, index: jax.Array) -> jax.Array:
  """x [n, d] rows at `index` (any shape) -> [*index.shape, d]; zeros where index is n or more."""
  return x.at[index].get(mode="fill", fill_value=0)


# Tokens move to their expert slots and back by gathering rows, both ways: each direction's
# gradient is a gather through the other direction's index (a token's k choices to its slots,
# a slot to the choice it holds), where autodiff would scatter-add (on a GPU with float atomics,
# which add a token's k slot gradients in no fixed order). Within one routing group of t tokens,
# k choices each, and s = e * c slots: choice_slot [t, k] is expert * c + slot (s: dropped, or
# padding), slot_choice [s] is token * k + choice (t * k: an empty slot).


@jax.custom_vjp
def _to_slots(x: jax.Array, slot_choice: jax.Array, choice_slot: jax.Array) -> jax.Array:
  """x [t, d] -> [s, d]: each slot's token row; zeros for an empty slot."""
  return _rows(x, slot_choice // choice_slot.shape[1])


def _to_slots_forward(x, slot_choice, choice_slot):
  return _to_slots(x, slot_choice, choice_slot), (slot_choice, choice_slot)


def _to_slots_backward(residuals, d_slots):
  _, choice_slot = residuals
  # A token's gradient is the sum over its choices' slots (nothing from a dropped choice).
  d_x = _rows(d_slots, choice_slot).astype(jnp.float32).sum(axis=1)  # [t, d]
  return d_x.astype(d_slots.dtype), None, None


_to_slots.defvjp(_to_slots_forward, _to_slots_backward)


@jax.custom_vjp
def _from_slots(slots: jax.Array, choice_slot: jax.Array, slot_choice: jax.Array) -> jax.Array:
  """slots [s, d] -> [t, k, d]: each choice's slot row; zeros for a dropped choice."""
  return _rows(slots, choice_slot)


def _from_slots_forward(slots, choice_slot, slot_choice):
  return _from_slots(slots, choice_slot, slot_choice), (choice_slot, slot_choice)


def _from_slots_backward(residuals, d_rows):
  _, slot_choice = residuals
  t, k, d = d_rows.shape
  return _rows(d_rows.reshape(t * k, d), slot_choice), None, None  # An empty slot: zeros.


_from_slots.defvjp(_from_slots_forward, _from_slots_backward)


def _group_axes(batch: int, length: int, group: int) -> tuple[str, ...]:
  """The mesh axes the routing groups [batch * length / group] are split over: the batch's, and
  the length's when its shards hold whole windows (then each device routes its own windows, and
  the length is never gathered)."""
  mesh = parallel_context.active_mesh()
  if mesh is None:
    return ()
  spec = parallel_context.logical_spec(("batch", "length"), (batch, length), mesh)
  axes, length_axes = parallel_context.spec_axes(spec, 0), parallel_context.spec_axes(spec, 1)
  shards = math.prod(mesh.shape[a] for a in length_axes)
  if length_axes and length % (shards * group) == 0:
    axes += length_axes
  return axes


def _constrain(x: jax.Array, layout: str, group_axes: tuple[str, ...],
               last: str | None = None) -> jax.Array:
  """Shards slots [b, e, c, n] (layout "tokens") or [e, b, c, n] (layout "experts"); b counts
  routing groups, split over `group_axes` (`_group_axes`).

  By tokens, the groups are split as the tokens are everywhere else in the model and the experts
  are whole; by experts, the experts are split over the expert mesh axis and the groups over the
  group axes the expert axis leaves. Between the layouts XLA moves the slots with an all-to-all
  when the rules split the batch over the expert axis too, and otherwise with a local slice going
  in and an all-gather coming out. `last` is the logical name of n; mesh axes that do not divide
  a dimension are left out (e.g. 2 experts on a 4-way expert axis).
  """
  mesh = parallel_context.active_mesh()
  if mesh is None:
    return x
  batch_dim, expert_dim = (0, 1) if layout == "tokens" else (1, 0)
  def axes(name, dim, taken=()):
    spec = parallel_context.logical_spec((name,), (x.shape[dim],), mesh)
    return tuple(a for a in parallel_context.spec_axes(spec, 0) if a not in taken)
  expert_axes = () if layout == "tokens" else axes("expert", expert_dim)
  batch_axes = tuple(a for a in group_axes if a not in expert_axes)
  spec = [None] * 4
  spec[expert_dim], spec[batch_dim] = expert_axes or None, batch_axes or None
  spec[3] = axes(last, 3, expert_axes + batch_axes) or None
  return jax.lax.with_sharding_constraint(x, P(*spec))


class _ExpertKernels(nn.Module):
  """One matrix per expert, [e, in, out]: a float param "kernel", initialized as a dense layer's
  (fan-in: the input axis); or with weight_bits 8 / 4 group-wise int weights as a quantized
  projection holds them (`gen_jax.quant.formats`): qweight [e, in / g, g (g / 2 for int4), out]
  int8 and scale [e, in / g, out]. Returns the float kernel, or (qweight, scale)."""
  shape: tuple[int, int, int]
  names: tuple[str, str, str]  # Logical axes.
  param_dtype: Dtype
  weight_bits: int = 0
  group_size: int = 64

  @nn.compact
  def __call__(self):
    e, in_size, out_size = self.shape
    if not self.weight_bits:
      init = nn.initializers.lecun_normal(in_axis=1, out_axis=2, batch_axis=(0,))
      return self.param("kernel", partitioned(init, self.names), self.shape, self.param_dtype)
    if in_size % self.group_size:
      raise ValueError(f"model.weight_group_size: {self.group_size} does not divide the input "
                       f"size {in_size} of the experts' {self.name!r}")
    expert, in_name, out_name = self.names
    groups = in_size // self.group_size
    qweight = self.param(
        "qweight", partitioned(nn.initializers.zeros_init(), (expert, in_name, None, out_name)),
        (e, groups, formats.stored_group_size(self.weight_bits, self.group_size), out_size),
        jnp.int8)
    scale = self.param("scale", partitioned(nn.initializers.ones_init(),
                                            (expert, in_name, out_name)),
                       (e, groups, out_size), self.param_dtype)
    return qweight, scale


def _float_kernels(kernel, bits: int, dtype) -> jax.Array:
  """An expert stack in `dtype`: the float kernel, or int weights (qweight, scale) dequantized."""
  if not bits:
    return kernel.astype(dtype)
  qweight, scale = kernel
  return formats.dequantize(qweight, scale, bits, dtype)


def _experts_split(num_experts: int) -> bool:
  """Whether the active mesh and logical rules split the experts over devices."""
  mesh = parallel_context.active_mesh()
  if mesh is None:
    return False
  spec = parallel_context.logical_spec(("expert",), (num_experts,), mesh)
  return math.prod(mesh.shape[a] for a in parallel_context.spec_axes(spec, 0)) > 1


def _chosen_experts(x: jax.Array, experts: jax.Array, weights: jax.Array, kernels, bits: int,
                    dtype) -> jax.Array:
  """Each of a few tokens' choices through its expert alone: x [n, d], experts [n, k] int,
  weights [n, k] float32 (0 for a dropped choice), kernels (wi_gate [e, d, f], wi_up [e, d, f],
  wo [e, f, d], each float or `bits`-bit (qweight, scale)) -> [n, d] float32. Int weights are
  multiplied as a quantized projection's for a few rows are (`quant.matmul.int_matmul`: the codes
  read once, widened in the product).

  Each choice's matrices are dynamic slices of the stacks, so a decoding step of n rows multiplies
  by n * k experts' weights, not all e. XLA:GPU copies each slice before its product (the offsets
  are data, which its dynamic-slice fusion does not take), so it reads them twice and writes them
  once: by benchmarks/aot_hlo.py, Mixtral-8x7B's batch-1 step moves 0.76x the bytes of multiplying
  by every expert where reading the chosen ones in place would move about 0.3x.
  """
  def product(v, kernel, expert):
    one = jax.tree.map(lambda w: jax.lax.dynamic_index_in_dim(w, expert, keepdims=False), kernel)
    if not bits:
      return v @ one.astype(dtype)
    return int_matmul(v, *one, bits, dtype)

  w_gate, w_up, w_out = kernels
  out = []
  for row in range(x.shape[0]):
    total = jnp.zeros(x.shape[1:], jnp.float32)
    for choice in range(experts.shape[1]):
      expert = experts[row, choice]
      hidden = nn.silu(product(x[row], w_gate, expert)) * product(x[row], w_up, expert)  # [f]
      total = total + weights[row, choice] * product(hidden, w_out, expert).astype(jnp.float32)
    out.append(total)
  return jnp.stack(out)


class MoeMlp(nn.Module):
  """A SwiGLU MLP per expert; each token goes to its top-k experts, weighted by its gates.

  Parameters: router/kernel [d, e] (float32 logits), wi_gate/kernel and wi_up/kernel [e, d, f],
  wo/kernel [e, f, d], with logical axes (embed, None), (expert, embed, mlp), (expert, mlp, embed);
  with weight_bits 8 or 4 each expert stack is qweight and scale instead (`_ExpertKernels`).
  """
  num_experts: int
  experts_per_token: int
  mlp_dim: int
  capacity_factor: float  # See expert_capacity.
  group_size: int = 0  # Tokens per routing group; 0: each sequence is one group.
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32
  weight_bits: int = 0  # 0: float expert kernels; 8 or 4: group-wise int weights (gen_jax.quant).
  weight_group_size: int = 64

  def _through_slots(self, x, experts, choice_kept, choice_slot_index, gates, c, kernels,
                     constrain):
    """Every expert over its c slots per group: x [b, t, d]; experts, choice_kept (0 or 1),
    choice_slot_index and gates [b, t, k] -> [b, t, d].

    Slots are filled and read back by index (one-hot dispatch and combine products would cost
    2 * t * e * c * d FLOPs each per group, quadratic in its length t): choice_slot [b, t, k] and
    slot_choice [b, e * c] as defined above `_to_slots`.
    """
    b, t, d = x.shape
    k = experts.shape[-1]
    e = self.num_experts
    choice_slot = jnp.where(choice_kept > 0, experts * c + choice_slot_index, e * c)
    choices = jnp.arange(t * k, dtype=jnp.int32)
    # Kept choices own distinct slots; the others point past them and are dropped.
    slot_choice = jax.vmap(lambda i: jnp.full((e * c,), t * k, jnp.int32).at[i.reshape(-1)].set(
        choices, mode="drop"))(choice_slot)
    slots = jax.vmap(_to_slots)(x, slot_choice, choice_slot).reshape(b, e, c, d)
    slots = constrain(slots, "tokens")
    expert_inputs = constrain(jnp.swapaxes(slots, 0, 1), "experts")  # [e, b, c, d]

    # Each expert's products over its b * c rows as one matrix ([e, b, c, n] <-> [e, m, n]):
    # XLA:CPU ran the products with two batch-like axes about 2x slower.
    # Int weights dequantized first (XLA writes each stack in `dtype`): products of many rows.
    w_gate, w_up, w_out = (_float_kernels(w, self.weight_bits, self.dtype) for w in kernels)
    matrix = lambda v: v.reshape(e, b * c, v.shape[-1]).astype(self.dtype)  # noqa: E731
    per_group = lambda v: v.reshape(e, b, c, v.shape[-1])  # noqa: E731
    inputs = matrix(expert_inputs)
    hidden = (nn.silu(jnp.einsum("emd,edf->emf", inputs, w_gate))
              * jnp.einsum("emd,edf->emf", inputs, w_up))  # [e, m, f]
    hidden = constrain(per_group(hidden), "experts", "mlp")  # [e, b, c, f]
    expert_outputs = jnp.einsum("emf,efd->emd", matrix(hidden), w_out)
    expert_outputs = constrain(per_group(expert_outputs), "experts")  # [e, b, c, d]
    slots = constrain(jnp.swapaxes(expert_outputs, 0, 1), "tokens")  # [b, e, c, d]

    # Each token's choices read back from their slots, summed with their gates in float32.
    rows = jax.vmap(_from_slots)(slots.reshape(b, e * c, d), choice_slot, slot_choice)
    return (gates[..., None] * rows.astype(jnp.float32)).sum(axis=2).astype(x.dtype)

  @nn.compact
  def __call__(self, x: jax.Array, valid: jax.Array | None = None
               ) -> tuple[jax.Array, dict[str, jax.Array]]:
    """x: [b, t, d]; valid: [b, t] bool, False for padding (default: all valid).

    Returns:
      ([b, t, d] output, {name: [b] float32} for the names in ROUTER_STATS).
    """
    batch, length, d = x.shape
    e, k = self.num_experts, self.experts_per_token
    valid = jnp.ones((batch, length), bool) if valid is None else valid
    # Routing groups: [b, t] below is [groups, tokens per group]; padding fills the last window.
    t = self.group_size if 0 < self.group_size < length else length
    pad = -length % t
    x = jnp.pad(x, ((0, 0), (0, pad), (0, 0))).reshape(-1, t, d)
    valid = jnp.pad(valid, ((0, 0), (0, pad))).reshape(-1, t)
    c = expert_capacity(t, e, k, self.capacity_factor)
    group_axes = _group_axes(batch, length, t)
    constrain = lambda x, layout, last=None: _constrain(x, layout, group_axes, last)  # noqa: E731

    # Routing in float32: top-k and the softmax are sensitive to bfloat16 rounding. Switch's
    # smaller init (scale 0.1) starts the router near uniform.
    router = nn.DenseGeneral(
        e, use_bias=False, dtype=jnp.float32, param_dtype=self.param_dtype,
        kernel_init=partitioned(nn.initializers.variance_scaling(0.1, "fan_in", "truncated_normal"),
                                ("embed", None)), name="router")
    logits = router(x.astype(jnp.float32))  # [b, t, e]
    # Products and sums rather than einsums here: a matmul may round float32 to bfloat16 (TPU).
    chosen = _top_k_one_hot(logits, k)  # [b, t, k, e]
    gates = jax.nn.softmax((chosen * logits[:, :, None, :]).sum(-1), axis=-1)  # [b, t, k]
    chosen = chosen * valid[..., None, None]
    assignment = chosen.sum(axis=2).astype(jnp.int32)  # [b, t, e] in {0, 1}: k distinct experts
    slot = jnp.cumsum(assignment, axis=1) - 1  # [b, t, e]: earlier tokens of the row go first
    kept = assignment * (slot < c)  # [b, t, e]

    f = self.mlp_dim
    stack = lambda shape, names, name: _ExpertKernels(  # noqa: E731
        shape, names, self.param_dtype, self.weight_bits, self.weight_group_size, name=name)()
    kernels = (stack((e, d, f), ("expert", "embed", "mlp"), "wi_gate"),
               stack((e, d, f), ("expert", "embed", "mlp"), "wi_up"),
               stack((e, f, d), ("expert", "mlp", "embed"), "wo"))
    pick = lambda v: (chosen.astype(jnp.int32) * v[:, :, None, :]).sum(-1)  # noqa: E731
    experts = pick(jnp.arange(e, dtype=jnp.int32)[None, None])  # [b, t, k]
    choice_kept = pick(kept)  # [b, t, k] in {0, 1}
    if x.shape[0] * t * k < e and not _experts_split(e):
      # Fewer choices than experts (decoding a few rows): each through its own expert, so only
      # the chosen experts' weights are read.
      out = _chosen_experts(x.reshape(-1, d).astype(self.dtype), experts.reshape(-1, k),
                            (gates * choice_kept).reshape(-1, k), kernels, self.weight_bits,
                            self.dtype)
      out = out.astype(x.dtype).reshape(x.shape)
    else:
      out = self._through_slots(x, experts, choice_kept, pick(slot), gates, c, kernels,
                                constrain)
    out = out.reshape(batch, length + pad, d)[:, :length]

    tokens = valid.sum(axis=1).astype(jnp.float32)  # [b] per group
    num_valid = jnp.maximum(tokens, 1)
    probs = jax.nn.softmax(logits, axis=-1) * valid[..., None]  # [b, t, e]
    # Switch eq. 4 over top-k assignments: the routed fraction is a non-differentiable count, the
    # mean probability carries the gradient; both sum to 1 over experts, so balance gives 1.
    routed_fraction = assignment.sum(axis=1) / (num_valid[:, None] * k)  # [b, e]
    mean_prob = probs.sum(axis=1) / num_valid[:, None]  # [b, e]
    log_z = jax.nn.logsumexp(logits, axis=-1)  # [b, t]
    # Token-weighted sums per group, then per sequence: a sequence's groups add up.
    per_sequence = lambda v: v.reshape(batch, -1).sum(axis=1)  # noqa: E731 - [groups] -> [batch]
    sequence_tokens = jnp.maximum(per_sequence(tokens), 1)
    stats = {
        "aux_loss": per_sequence(e * (routed_fraction * mean_prob).sum(axis=-1) * tokens)
                    / sequence_tokens,
        "z_loss": per_sequence((jnp.square(log_z) * valid).sum(axis=1)) / sequence_tokens,
        "dropped": per_sequence((assignment - kept).sum(axis=(1, 2)).astype(jnp.float32)),
        "assigned": per_sequence(assignment.sum(axis=(1, 2)).astype(jnp.float32)),
    }
    return out, stats
