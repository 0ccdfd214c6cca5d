"""Independent numpy implementations used as references by the tests.

Written from the papers' formulas, sharing no code with gen_jax, so a test comparing against them
can fail when the library is wrong.
"""
import numpy as np


def softmax(x, axis=-1):
  x = x - x.max(axis=axis, keepdims=True)
  e = np.exp(x)
  return e / e.sum(axis=axis, keepdims=True)


def log_softmax(x, axis=-1):
  x = x - x.max(axis=axis, keepdims=True)
  return x - np.log(np.exp(x).sum(axis=axis, keepdims=True))


def mha(q, k, v, mask):
  """Plain multi-head attention, one head at a time. q [t, n, h], k/v [s, n, h], mask [t, s]."""
  t, n, h = q.shape
  out = np.zeros((t, n, h))
  for head in range(n):
    logits = q[:, head] @ k[:, head].T / np.sqrt(h)
    logits = np.where(mask, logits, -np.inf)
    w = np.zeros_like(logits)
    rows = mask.any(-1)
    w[rows] = softmax(logits[rows])
    out[:, head] = w @ v[:, head]
  return out


def rms_norm(x, scale, eps):
  return x / np.sqrt((x * x).mean(-1, keepdims=True) + eps) * scale


def rope(x, positions, base):
  """x [t, n, h], positions [t]: rotate pairs (i, i + h/2) by position * base^(-2i/h)."""
  h = x.shape[-1]
  out = np.empty_like(x)
  for i in range(h // 2):
    theta = positions * base ** (-2.0 * i / h)
    c, s = np.cos(theta)[:, None], np.sin(theta)[:, None]
    a, b = x[..., i], x[..., i + h // 2]
    out[..., i] = a * c - b * s
    out[..., i + h // 2] = b * c + a * s
  return out


def transformer_logits(params, tokens, positions, segment_ids, cfg):
  """The LLaMA-style forward pass for one sequence. tokens/positions/segment_ids: [t]."""
  p = {k: np.asarray(v, np.float64) for k, v in _flatten(params).items()}
  t = len(tokens)
  x = p["embed/embedding"][tokens]
  causal = np.tril(np.ones((t, t), bool))
  mask = causal & (segment_ids[:, None] == segment_ids[None, :]) & (segment_ids[:, None] != 0)
  if getattr(cfg, "sliding_window", 0):
    index = np.arange(t)
    mask &= index[:, None] - index[None, :] < cfg.sliding_window
  group = cfg.num_heads // cfg.num_kv_heads
  for layer in range(cfg.num_layers):
    lp = {k.split("/", 1)[1]: v[layer] for k, v in p.items() if k.startswith("layers/")}
    h = rms_norm(x, lp["attention_norm/scale"], cfg.norm_eps)
    q = np.einsum("td,dnh->tnh", h, lp["attention/query/kernel"])
    k = np.einsum("td,dkh->tkh", h, lp["attention/key/kernel"])
    v = np.einsum("td,dkh->tkh", h, lp["attention/value/kernel"])
    q, k = rope(q, positions, cfg.rope_base), rope(k, positions, cfg.rope_base)
    k, v = np.repeat(k, group, axis=1), np.repeat(v, group, axis=1)
    a = mha(q, k, v, mask)
    x = x + np.einsum("tnh,nhd->td", a, lp["attention/out/kernel"])
    h = rms_norm(x, lp["mlp_norm/scale"], cfg.norm_eps)
    gate, up = h @ lp["mlp/wi_gate/kernel"], h @ lp["mlp/wi_up/kernel"]
    x = x + (gate / (1 + np.exp(-gate)) * up) @ lp["mlp/wo/kernel"]
  x = rms_norm(x, p["final_norm/scale"], cfg.norm_eps)
  head = p["embed/embedding"].T if cfg.tie_embeddings else p["lm_head/kernel"]
  return x @ head


def _flatten(tree, prefix=""):
  out = {}
  for k, v in tree.items():
    name = f"{prefix}/{k}" if prefix else k
    if isinstance(v, dict):
      out.update(_flatten(v, name))
    else:
      out[name] = v
  return out
