"""gen_jax's LLaMA-style decoder (Touvron et al., 2023) in plain PyTorch, for comparison rows only.

Written the nanoGPT way: RMSNorm, rotary positions, grouped-query attention through
`scaled_dot_product_attention`, SwiGLU, an untied head, AdamW with warmup+cosine and clipping. Its
parameters are named after gen_jax's so `load_flax_params` can start it from the very same weights.
The library never imports torch; only benchmarks/ does.
"""
import math
import time

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from gen_jax import objectives


def _rope(x, cos, sin):
  """x [b, n, t, h]; cos, sin [b, 1, t, h/2]; the rotate-half layout gen_jax uses."""
  x1, x2 = x.chunk(2, dim=-1)
  return torch.cat([x1 * cos - x2 * sin, x2 * cos + x1 * sin], dim=-1)


class Attention(nn.Module):
  def __init__(self, c):
    super().__init__()
    self.num_heads, self.num_kv_heads, self.head_dim = c.num_heads, c.num_kv_heads, c.head_dim
    self.query = nn.Linear(c.embed_dim, c.num_heads * c.head_dim, bias=False)
    self.key = nn.Linear(c.embed_dim, c.num_kv_heads * c.head_dim, bias=False)
    self.value = nn.Linear(c.embed_dim, c.num_kv_heads * c.head_dim, bias=False)
    self.out = nn.Linear(c.num_heads * c.head_dim, c.embed_dim, bias=False)

  def forward(self, x, cos, sin, mask):
    b, t, _ = x.shape
    q = self.query(x).view(b, t, self.num_heads, self.head_dim).transpose(1, 2)  # [b, n, t, h]
    k = self.key(x).view(b, t, self.num_kv_heads, self.head_dim).transpose(1, 2)  # [b, k, t, h]
    v = self.value(x).view(b, t, self.num_kv_heads, self.head_dim).transpose(1, 2)
    q, k = _rope(q, cos, sin), _rope(k, cos, sin)
    # enable_gqa: query head i reads kv head i // (n / k), as gen_jax groups them.
    y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, enable_gqa=True)  # [b, n, t, h]
    return self.out(y.transpose(1, 2).reshape(b, t, -1))


class Block(nn.Module):
  def __init__(self, c):
    super().__init__()
    self.attention_norm = nn.RMSNorm(c.embed_dim, eps=c.norm_eps)
    self.attention = Attention(c)
    self.mlp_norm = nn.RMSNorm(c.embed_dim, eps=c.norm_eps)
    self.wi_gate = nn.Linear(c.embed_dim, c.mlp_dim, bias=False)
    self.wi_up = nn.Linear(c.embed_dim, c.mlp_dim, bias=False)
    self.wo = nn.Linear(c.mlp_dim, c.embed_dim, bias=False)

  def forward(self, x, cos, sin, mask):
    x = x + self.attention(self.attention_norm(x), cos, sin, mask)
    h = self.mlp_norm(x)
    return x + self.wo(F.silu(self.wi_gate(h)) * self.wi_up(h))


class Decoder(nn.Module):
  """Takes gen_jax's `config.model` (vocab_size, embed_dim, num_layers, heads, mlp_dim, ...)."""

  def __init__(self, c):
    super().__init__()
    self.embed = nn.Embedding(c.vocab_size, c.embed_dim)
    self.layers = nn.ModuleList(Block(c) for _ in range(c.num_layers))
    self.final_norm = nn.RMSNorm(c.embed_dim, eps=c.norm_eps)
    self.lm_head = nn.Linear(c.embed_dim, c.vocab_size, bias=False)
    half = c.head_dim // 2
    self.register_buffer("inv_freq", 1.0 / c.rope_base ** (torch.arange(half) / half),
                         persistent=False)

  def forward(self, tokens, positions, segment_ids):
    """tokens, positions, segment_ids: [b, t] -> logits [b, t, v]."""
    t = tokens.shape[1]
    angles = positions[:, None, :, None].float() * self.inv_freq  # [b, 1, t, h/2]
    cos, sin = angles.cos(), angles.sin()
    causal = torch.ones(t, t, dtype=torch.bool).tril()
    same_doc = segment_ids[:, :, None] == segment_ids[:, None, :]
    # Padding (segment 0) sees itself rather than nothing, which would give NaNs. It only ever
    # ends a window, so no real token sees it, and its targets never count: the loss is unchanged.
    mask = ((causal & same_doc) | torch.eye(t, dtype=torch.bool))[:, None]  # [b, 1, t, s]
    x = self.embed(tokens)
    for layer in self.layers:
      x = layer(x, cos, sin, mask)
    return self.lm_head(self.final_norm(x))


def load_flax_params(model: Decoder, params) -> None:
  """Copies gen_jax's parameters (numpy; layers stacked by nn.scan on axis 0) into `model`."""
  def linear(kernel, num_in_axes=1):  # Flax [in..., out...] -> torch [out, in].
    in_size = math.prod(kernel.shape[:num_in_axes])
    return torch.from_numpy(np.ascontiguousarray(kernel.reshape(in_size, -1).T))

  layers, attention = params["layers"], params["layers"]["attention"]
  state = {"embed.weight": torch.from_numpy(params["embed"]["embedding"]),
           "final_norm.weight": torch.from_numpy(params["final_norm"]["scale"]),
           "lm_head.weight": linear(params["lm_head"]["kernel"])}
  for i in range(len(model.layers)):
    prefix = f"layers.{i}."
    for name in ("query", "key", "value"):
      state[prefix + f"attention.{name}.weight"] = linear(attention[name]["kernel"][i])
    state[prefix + "attention.out.weight"] = linear(attention["out"]["kernel"][i], num_in_axes=2)
    for name in ("attention_norm", "mlp_norm"):
      state[prefix + f"{name}.weight"] = torch.from_numpy(layers[name]["scale"][i])
    for name in ("wi_gate", "wi_up", "wo"):
      state[prefix + f"{name}.weight"] = linear(layers["mlp"][name]["kernel"][i])
  model.load_state_dict(state, strict=True)


def learning_rate(step: int, optimizer_config, num_steps: int) -> float:
  """Linear warmup from peak / warmup, cosine decay to min_lr_ratio * peak at num_steps, then
  constant (gen_jax.train.state.learning_rate_schedule)."""
  o = optimizer_config
  warmup = min(o.warmup_steps, num_steps)
  if step < warmup:
    start = o.learning_rate / max(warmup, 1)
    return start + (o.learning_rate - start) * step / warmup
  decay_steps = max(num_steps, warmup + 1) - warmup
  progress = min(step - warmup, decay_steps) / decay_steps
  end = o.learning_rate * o.min_lr_ratio
  return end + (o.learning_rate - end) * 0.5 * (1 + math.cos(math.pi * progress))


def make_optimizer(model: nn.Module, o) -> torch.optim.AdamW:
  """AdamW with decay on matrices only (embedding and kernels), as gen_jax's decay mask."""
  params = list(model.parameters())
  return torch.optim.AdamW([{"params": [p for p in params if p.dim() >= 2]},
                            {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0}],
                           lr=0.0, betas=(o.b1, o.b2), eps=o.eps, weight_decay=o.weight_decay)


def loss_sum(model: nn.Module, batch: dict[str, np.ndarray]):
  """A packed [b, t+1] batch -> (summed nats over counted targets, counted targets, targets,
  weights); targets count exactly where gen_jax.objectives.packed_targets says they do."""
  inputs, targets, weights = (torch.from_numpy(np.array(x)) for x in
                              objectives.packed_targets(batch["tokens"], batch["segment_ids"]))
  positions, segment_ids = (torch.from_numpy(batch[k][:, :-1].astype(np.int64))
                            for k in ("positions", "segment_ids"))
  logits = model(inputs.long(), positions, segment_ids)
  nats = F.cross_entropy(logits.flatten(0, 1), targets.long().flatten(), reduction="none")
  return (nats * weights.flatten()).sum(), weights.sum(), targets, weights


def train(model: nn.Module, config, batches, num_steps: int, *, budget_sec: float = math.inf,
          max_steps: int | None = None, label: str = "") -> tuple[list[float], float]:
  """Trains in place until budget_sec or max_steps runs out; returns (losses, seconds).

  The learning rate decays over `num_steps` (gen_jax's schedule); the optimizer starts fresh.
  """
  opt = make_optimizer(model, config.optimizer)
  losses, next_report = [], budget_sec / 5
  start = time.perf_counter()
  while max_steps is None or len(losses) < max_steps:
    nats, weight, _, _ = loss_sum(model, next(batches))
    loss = nats / weight.clamp_min(1e-9)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    if config.optimizer.grad_clip_norm > 0:
      nn.utils.clip_grad_norm_(model.parameters(), config.optimizer.grad_clip_norm)
    for group in opt.param_groups:
      group["lr"] = learning_rate(len(losses), config.optimizer, num_steps)
    opt.step()
    losses.append(loss.item())
    elapsed = time.perf_counter() - start
    if label and elapsed >= next_report:
      print(f"  {label} {elapsed:6.1f}s step {len(losses)}: loss {losses[-1]:.3f}", flush=True)
      next_report += budget_sec / 5
    if elapsed >= budget_sec:
      break
  return losses, time.perf_counter() - start


def evaluate(model: nn.Module, eval_batches, byte_lengths: np.ndarray) -> dict[str, float]:
  """gen_jax's llm held-out metrics: nats per counted target, and bits per UTF-8 byte."""
  total_nats = total_weight = total_bytes = 0.0
  with torch.no_grad():
    for batch in eval_batches:
      nats, weight, targets, weights = loss_sum(model, batch)
      total_nats, total_weight = total_nats + float(nats), total_weight + float(weight)
      total_bytes += float((byte_lengths[targets.numpy()] * weights.numpy()).sum())
  return {"eval/loss": total_nats / total_weight,
          "eval/bits_per_byte": total_nats / math.log(2) / total_bytes}
