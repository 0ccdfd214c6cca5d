"""Mixture-of-experts MLP: top-k routing of each token to SwiGLU experts with a fixed capacity.

The sparsely-gated mixture of experts of Shazeer et al. (2017), "Outrageously Large Neural
Networks", with the dispatch/combine einsums and expert capacity of GShard (Lepikhin et al., 2020)
and the load-balancing loss of the Switch Transformer (Fedus et al., 2021, eq. 4). The router
z-loss is ST-MoE's (Zoph et al., 2022). Gates follow Mixtral (Jiang et al., 2024): a softmax over
the router logits of the k chosen experts, so a token's gates sum to 1 (with k = 1 the gate is 1
and the router learns from the auxiliary losses alone).

Letters in einsums and shapes: b batch, t length, d embed, f mlp, e expert, c capacity (slots
per expert), k choice (the rank among a token's top-k). Inside MoeMlp, between the routing groups'
reshape and its undoing, b counts groups and t their tokens.

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

The dispatch and combine tensors [groups, g, e, c] hold about b * t * g * k * capacity_factor
numbers: quadratic in the length when a group is the whole sequence (g = t), linear with a fixed
group_size, which long sequences need (t = 32k, k = 2: 2.7e9 per sequence against 1.3e8 in
windows of 1024 tokens). Smaller groups balance load more locally: a burst of tokens preferring
one expert overflows a window's capacity sooner than a whole sequence's.
"""
import math
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax.sharding import PartitionSpec as P

from gen_jax.models.layers import partitioned
from gen_jax.parallel import context as parallel_context

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


class MoeMlp(nn.Module):
  """A SwiGLU MLP per expert; each token goes to its top-k experts, weighted by its gates.

  Parameters: router/kernel [d, e] (float32 logits), wi_gate/kernel and wi_up/kernel [e, d, f],
  wo/kernel [e, f, d], with logical axes (embed, None), (expert, embed, mlp), (expert, mlp, embed).
  """
  num_experts: int
  experts_per_token: int
  mlp_dim: int
  capacity_factor: float  # See expert_capacity.
  group_size: int = 0  # Tokens per routing group; 0: each sequence is one group.
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

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
    gate = (gates[..., None] * chosen).sum(axis=2)  # [b, t, e]
    assignment = chosen.sum(axis=2).astype(jnp.int32)  # [b, t, e] in {0, 1}: k distinct experts
    slot = jnp.cumsum(assignment, axis=1) - 1  # [b, t, e]: earlier tokens of the row go first
    kept = assignment * (slot < c)  # [b, t, e]
    dispatch = jax.nn.one_hot(slot, c, dtype=jnp.float32) * kept[..., None]  # [b, t, e, c]
    combine = dispatch * gate[..., None]  # [b, t, e, c]

    slots = jnp.einsum("btec,btd->becd", dispatch.astype(x.dtype), x)  # [b, e, c, d]
    slots = constrain(slots, "tokens")
    expert_inputs = constrain(jnp.swapaxes(slots, 0, 1), "experts")  # [e, b, c, d]

    def expert_weights(shape, names, equation, name):
      # Each expert's matrix is initialized as a dense layer's: fan-in is the contracted axis.
      init = nn.initializers.lecun_normal(in_axis=1, out_axis=2, batch_axis=(0,))
      return nn.Einsum(shape, equation, use_bias=False, dtype=self.dtype,
                       param_dtype=self.param_dtype, kernel_init=partitioned(init, names),
                       name=name)

    f = self.mlp_dim
    wi_gate = expert_weights((e, d, f), ("expert", "embed", "mlp"), "ebcd,edf->ebcf", "wi_gate")
    wi_up = expert_weights((e, d, f), ("expert", "embed", "mlp"), "ebcd,edf->ebcf", "wi_up")
    wo = expert_weights((e, f, d), ("expert", "mlp", "embed"), "ebcf,efd->ebcd", "wo")
    hidden = nn.silu(wi_gate(expert_inputs)) * wi_up(expert_inputs)  # [e, b, c, f]
    hidden = constrain(hidden, "experts", "mlp")
    expert_outputs = constrain(wo(hidden), "experts")  # [e, b, c, d]
    slots = constrain(jnp.swapaxes(expert_outputs, 0, 1), "tokens")  # [b, e, c, d]
    out = jnp.einsum("btec,becd->btd", combine.astype(x.dtype), slots)  # [b, t, d]

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
