"""Glow (Kingma & Dhariwal, 2018): RealNVP's multi-scale affine coupling flow (Dinh et al., 2017)
with actnorm and invertible 1x1 convolutions.

Every layer is a bijection on [batch, height, width, channels] arrays: `forward(x) -> (y,
log_det)` with log_det [batch] = log |det dy/dx| per example, and `inverse(y) -> x`. Each layer's
`__call__(x, reverse=False, data_init=False)` does the work; in reverse it returns the inverse and
the inverse map's log-det (the negative). The model is `levels` times [squeeze, steps_per_level x
(actnorm, invertible 1x1 conv, affine coupling)], with a split after every level but the last that
factors half the channels out to the prior. Splitting is itself a same-shape bijection here: the
factored-out half is whitened by a Gaussian conditioned on the kept half (Glow's learned prior), so
every latent the model returns is a standard normal under the prior.

The bijections and their log-determinants run in float32 whatever `dtype` says (`dtype` and
`param_dtype` apply to the coupling networks only): invertibility to float32 tolerance needs it.

Initialization: actnorm is data-dependent when the model is initialized with `data_init=True`
(its bias and log-scale make that batch's per-channel activations zero-mean, unit-variance, as in
Glow), and the identity otherwise; the last layer of every coupling network and every learned prior
start at zero, so a fresh coupling is the identity and a fresh prior is N(0, I). The 1x1 convs
start as a random rotation drawn from a fixed per-layer seed (not from the init rng), LU-decomposed
as W = P L (U + diag(sign(s) exp(log|s|))) with P and sign(s) fixed, so log |det W| = sum log|s|.
"""
import dataclasses
import functools
import math

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import scipy.linalg

from gen_jax.models.layers import partitioned

# Glow's zero-initialized output convs scale their output by exp(3 * log_gain), a per-channel gain
# that learns faster than the kernel alone near zero.
_ZERO_CONV_GAIN_FACTOR = 3.0
_HIGHEST = jax.lax.Precision.HIGHEST  # The 1x1 conv and its inverse must agree to float32.


@dataclasses.dataclass(frozen=True)
class FlowConfig:
  """Hyperparameters of the Glow model; the fields of `config.model` for the flow family."""
  image_size: int  # Square images, divisible by 2 ** levels.
  image_channels: int
  levels: int  # Scales: each squeezes 2x2 space into channels; all but the last split after.
  steps_per_level: int  # Flow steps [actnorm, 1x1 conv, coupling] per level.
  hidden_channels: int  # Width of each coupling network.
  # Couplings' log-scales are max_log_scale * tanh(raw / max_log_scale): bounded, so one step can
  # neither explode nor collapse a channel, and 0 (the identity) where the raw output is 0.
  max_log_scale: float = 3.0
  learned_prior: bool = True  # Split priors conditioned on the kept half; False: N(0, I).
  dtype: str = "float32"
  param_dtype: str = "float32"

  @classmethod
  def from_config(cls, model_config) -> "FlowConfig":
    return cls(**model_config.to_dict())


def _per_example_sum(x: jax.Array) -> jax.Array:
  """[b, ...] -> [b]."""
  return x.reshape(x.shape[0], -1).sum(axis=-1)


def standard_normal_log_prob(z: jax.Array) -> jax.Array:
  """log N(z; 0, I) summed over all but the batch axis: [b, ...] -> [b]."""
  return _per_example_sum(-0.5 * (z.astype(jnp.float32) ** 2 + math.log(2 * math.pi)))


def squeeze(x: jax.Array) -> jax.Array:
  """Space to depth: [b, H, W, C] -> [b, H/2, W/2, 4C], each 2x2 patch into channels."""
  b, h, w, c = x.shape
  x = x.reshape(b, h // 2, 2, w // 2, 2, c)  # [b, H/2, 2, W/2, 2, C]
  return x.transpose(0, 1, 3, 2, 4, 5).reshape(b, h // 2, w // 2, 4 * c)


def unsqueeze(x: jax.Array) -> jax.Array:
  """Depth to space, squeeze's inverse: [b, h, w, 4c] -> [b, 2h, 2w, c]."""
  b, h, w, c4 = x.shape
  c = c4 // 4
  x = x.reshape(b, h, w, 2, 2, c).transpose(0, 1, 3, 2, 4, 5)  # [b, h, 2, w, 2, c]
  return x.reshape(b, 2 * h, 2 * w, c)


class _Bijection(nn.Module):
  """forward/inverse over a subclass's `__call__(x, reverse=False, data_init=False) -> (out,
  log_det [b])`."""

  def forward(self, x: jax.Array, data_init: bool = False) -> tuple[jax.Array, jax.Array]:
    return self(x, data_init=data_init)

  def inverse(self, y: jax.Array) -> jax.Array:
    return self(y, reverse=True)[0]


class ActNorm(_Bijection):
  """Per-channel affine y = (x + bias) * exp(log_scale) (Glow, section 3.1).

  With data_init=True at initialization the bias and log-scale are the negated mean and log-std
  of the initializing batch per channel (over batch and positions); otherwise zeros (identity).
  """

  @nn.compact
  def __call__(self, x, reverse=False, data_init=False):
    """x [b, h, w, c] -> (y [b, h, w, c], log_det [b])."""
    c = x.shape[-1]
    x = x.astype(jnp.float32)

    def init_bias(rng, shape, dtype):
      return -x.mean(axis=(0, 1, 2)) if data_init else jnp.zeros(shape, dtype)

    def init_log_scale(rng, shape, dtype):
      if not data_init:
        return jnp.zeros(shape, dtype)
      return -jnp.log(x.std(axis=(0, 1, 2)) + 1e-6)  # The epsilon spares constant channels.

    bias = self.param("bias", partitioned(init_bias, (None,)), (c,), jnp.float32)
    log_scale = self.param("log_scale", partitioned(init_log_scale, (None,)), (c,), jnp.float32)
    log_det = jnp.full((x.shape[0],), x.shape[1] * x.shape[2] * log_scale.sum())
    if reverse:
      return x * jnp.exp(-log_scale) - bias, -log_det
    return (x + bias) * jnp.exp(log_scale), log_det


@functools.lru_cache(maxsize=None)
def _rotation_lu(channels: int, seed: int):
  """(P, L, U, sign(s), log|s|) of a seeded random rotation W = P L (U + diag(s)), as numpy."""
  rotation = np.linalg.qr(np.random.default_rng(seed).normal(size=(channels, channels)))[0]
  p, lower, upper = scipy.linalg.lu(rotation)
  s = np.diag(upper)
  return (p.astype(np.float32), lower.astype(np.float32), np.triu(upper, 1).astype(np.float32),
          np.sign(s).astype(np.float32), np.log(np.abs(s)).astype(np.float32))


class InvConv1x1(_Bijection):
  """Invertible 1x1 convolution y = W x at every position, W LU-decomposed (Glow, section 3.2)."""
  seed: int = 0  # Of the starting rotation and the fixed permutation P.

  @nn.compact
  def __call__(self, x, reverse=False, data_init=False):
    """x [b, h, w, c] -> (y [b, h, w, c], log_det [b])."""
    del data_init
    c = x.shape[-1]
    p, lower0, upper0, sign, log_abs = _rotation_lu(c, self.seed)
    constant = lambda value: (lambda rng, shape, dtype: jnp.asarray(value, dtype))  # noqa: E731
    lower = self.param("lower", partitioned(constant(lower0), (None, None)), (c, c), jnp.float32)
    upper = self.param("upper", partitioned(constant(upper0), (None, None)), (c, c), jnp.float32)
    log_s = self.param("log_s", partitioned(constant(log_abs), (None,)), (c,), jnp.float32)
    # The masks keep L unit lower-triangular and U strictly upper: only the diagonal s carries
    # the determinant.
    lower = jnp.tril(lower, -1) + jnp.eye(c)
    upper = jnp.triu(upper, 1) + jnp.diag(sign * jnp.exp(log_s))
    weight = jnp.matmul(p, jnp.matmul(lower, upper, precision=_HIGHEST), precision=_HIGHEST)
    log_det = jnp.full((x.shape[0],), x.shape[1] * x.shape[2] * log_s.sum())
    x = x.astype(jnp.float32)
    if reverse:
      y = jnp.einsum("bhwc,dc->bhwd", x, jnp.linalg.inv(weight), precision=_HIGHEST)
      return y, -log_det
    return jnp.einsum("bhwc,dc->bhwd", x, weight, precision=_HIGHEST), log_det


class ZeroConv(nn.Module):
  """A 3x3 conv starting at zero output, times a per-channel gain exp(3 log_gain) (Glow)."""
  features: int
  param_dtype: str = "float32"

  @nn.compact
  def __call__(self, x):
    """x [b, h, w, c_in] -> [b, h, w, features] float32."""
    y = nn.Conv(self.features, (3, 3), dtype=jnp.float32, param_dtype=jnp.dtype(self.param_dtype),
                kernel_init=partitioned(nn.initializers.zeros,
                                        ("conv_height", "conv_width", None, None)),
                bias_init=nn.initializers.zeros)(x.astype(jnp.float32))
    log_gain = self.param("log_gain", partitioned(nn.initializers.zeros, (None,)),
                          (self.features,), jnp.float32)
    return y * jnp.exp(_ZERO_CONV_GAIN_FACTOR * log_gain)


class CouplingNet(nn.Module):
  """Glow's coupling network: 3x3 conv, ReLU, 1x1 conv, ReLU, zero-initialized 3x3 conv."""
  hidden_channels: int
  out_channels: int
  dtype: str = "float32"
  param_dtype: str = "float32"

  @nn.compact
  def __call__(self, x):
    """x [b, h, w, c_in] -> [b, h, w, out_channels] float32."""
    dtype, param_dtype = jnp.dtype(self.dtype), jnp.dtype(self.param_dtype)
    kernel_init = partitioned(nn.initializers.lecun_normal(),
                              ("conv_height", "conv_width", None, "mlp"))
    h = x.astype(dtype)
    h = nn.relu(nn.Conv(self.hidden_channels, (3, 3), dtype=dtype, param_dtype=param_dtype,
                        kernel_init=kernel_init)(h))
    h = nn.relu(nn.Conv(self.hidden_channels, (1, 1), dtype=dtype, param_dtype=param_dtype,
                        kernel_init=kernel_init)(h))
    return ZeroConv(self.out_channels, param_dtype=self.param_dtype)(h)


class AffineCoupling(_Bijection):
  """RealNVP's affine coupling: the first half of the channels passes unchanged and conditions a
  shift and a bounded log-scale of the second: y_b = x_b * exp(log_scale(x_a)) + shift(x_a)."""
  hidden_channels: int
  max_log_scale: float = 3.0
  dtype: str = "float32"
  param_dtype: str = "float32"

  @nn.compact
  def __call__(self, x, reverse=False, data_init=False):
    """x [b, h, w, c] (c even) -> (y [b, h, w, c], log_det [b])."""
    del data_init
    half = x.shape[-1] // 2
    x = x.astype(jnp.float32)
    x_a, x_b = x[..., :half], x[..., half:]
    h = CouplingNet(self.hidden_channels, 2 * x_b.shape[-1], self.dtype, self.param_dtype)(x_a)
    shift, raw = h[..., 0::2], h[..., 1::2]  # Each [b, h, w, c - half].
    log_scale = self.max_log_scale * jnp.tanh(raw / self.max_log_scale)
    log_det = _per_example_sum(log_scale)
    if reverse:
      return jnp.concatenate([x_a, (x_b - shift) * jnp.exp(-log_scale)], axis=-1), -log_det
    return jnp.concatenate([x_a, x_b * jnp.exp(log_scale) + shift], axis=-1), log_det


class Squeeze(_Bijection):
  """Space to depth as a layer: [b, H, W, C] -> [b, H/2, W/2, 4C]; a permutation, log_det 0."""

  def __call__(self, x, reverse=False, data_init=False):
    del data_init
    zero = jnp.zeros((x.shape[0],), jnp.float32)
    return (unsqueeze(x) if reverse else squeeze(x)), zero


class Split(_Bijection):
  """Multi-scale factoring out (RealNVP section 3.6), as a same-shape bijection.

  x = [kept, z] (channel halves) -> y = [kept, (z - mean(kept)) * exp(-log_std(kept))]: the
  second half of y is what the model hands to the N(0, I) prior, so z ~ N(mean, std^2) is Glow's
  learned prior. mean and log_std come from a zero-initialized conv of the kept half (N(0, I) at
  first); with learned_prior False they are 0 and the split is the identity.
  """
  learned_prior: bool = True
  param_dtype: str = "float32"

  @nn.compact
  def __call__(self, x, reverse=False, data_init=False):
    """x [b, h, w, c] (c even) -> (y [b, h, w, c], log_det [b])."""
    del data_init
    half = x.shape[-1] // 2
    x = x.astype(jnp.float32)
    kept, z = x[..., :half], x[..., half:]
    if not self.learned_prior:
      return x, jnp.zeros((x.shape[0],), jnp.float32)
    stats = ZeroConv(2 * z.shape[-1], param_dtype=self.param_dtype)(kept)
    mean, log_std = stats[..., 0::2], stats[..., 1::2]
    log_det = -_per_example_sum(log_std)
    if reverse:
      return jnp.concatenate([kept, mean + z * jnp.exp(log_std)], axis=-1), -log_det
    return jnp.concatenate([kept, (z - mean) * jnp.exp(-log_std)], axis=-1), log_det


class FlowStep(_Bijection):
  """One step of flow: actnorm, invertible 1x1 conv, affine coupling."""
  hidden_channels: int
  max_log_scale: float
  seed: int  # The 1x1 conv's.
  dtype: str = "float32"
  param_dtype: str = "float32"

  def setup(self):
    self.actnorm = ActNorm()
    self.invconv = InvConv1x1(seed=self.seed)
    self.coupling = AffineCoupling(self.hidden_channels, self.max_log_scale, self.dtype,
                                   self.param_dtype)

  def __call__(self, x, reverse=False, data_init=False):
    """x [b, h, w, c] -> (y [b, h, w, c], log_det [b])."""
    layers = (self.actnorm, self.invconv, self.coupling)
    log_det = jnp.zeros((x.shape[0],), jnp.float32)
    for layer in (reversed(layers) if reverse else layers):
      x, layer_log_det = layer(x, reverse=reverse, data_init=data_init)
      log_det = log_det + layer_log_det
    return x, log_det


class Glow(nn.Module):
  """The multi-scale flow: image [b, H, W, C] <-> latents, one per level, each N(0, I) under the
  prior: level l < levels-1 factors out [b, H/2^(l+1), W/2^(l+1), 2^(l+1) C], the last keeps
  [b, H/2^L, W/2^L, 2^(L+1) C] (L = levels)."""
  config: FlowConfig

  def setup(self):
    c = self.config
    self.steps = [FlowStep(c.hidden_channels, c.max_log_scale, seed=i, dtype=c.dtype,
                           param_dtype=c.param_dtype)
                  for i in range(c.levels * c.steps_per_level)]
    self.splits = [Split(c.learned_prior, c.param_dtype) for _ in range(c.levels - 1)]

  def _level_steps(self, level: int):
    n = self.config.steps_per_level
    return self.steps[level * n:(level + 1) * n]

  def forward(self, x: jax.Array, data_init: bool = False
              ) -> tuple[tuple[jax.Array, ...], jax.Array]:
    """x [b, H, W, C] -> (latents, one per level (shapes: latent_shapes), log_det [b])."""
    log_det = jnp.zeros((x.shape[0],), jnp.float32)
    latents = []
    x = x.astype(jnp.float32)
    for level in range(self.config.levels):
      x = squeeze(x)
      for step in self._level_steps(level):
        x, step_log_det = step(x, data_init=data_init)
        log_det = log_det + step_log_det
      if level < self.config.levels - 1:
        x, split_log_det = self.splits[level](x)
        log_det = log_det + split_log_det
        half = x.shape[-1] // 2
        latents.append(x[..., half:])
        x = x[..., :half]
    latents.append(x)
    return tuple(latents), log_det

  def inverse(self, latents: tuple[jax.Array, ...]) -> jax.Array:
    """Latents (as forward returns them) -> x [b, H, W, C]."""
    x = latents[-1].astype(jnp.float32)
    for level in reversed(range(self.config.levels)):
      if level < self.config.levels - 1:
        x = self.splits[level].inverse(jnp.concatenate([x, latents[level]], axis=-1))
      for step in reversed(self._level_steps(level)):
        x = step.inverse(x)
      x = unsqueeze(x)
    return x

  def log_prob(self, x: jax.Array, data_init: bool = False) -> jax.Array:
    """log p(x) [b] in nats: the prior's log-density of the latents plus the log-det."""
    latents, log_det = self.forward(x, data_init=data_init)
    return sum(standard_normal_log_prob(z) for z in latents) + log_det

  def latent_shapes(self) -> tuple[tuple[int, int, int], ...]:
    """Each latent's shape without the batch axis, in forward's order."""
    c = self.config
    shapes = []
    size, channels = c.image_size, c.image_channels
    for level in range(c.levels):
      size, channels = size // 2, channels * 4
      if level < c.levels - 1:
        channels //= 2
        shapes.append((size, size, channels))
    shapes.append((size, size, channels))
    return tuple(shapes)

  def sample(self, rng: jax.Array, num_samples: int, temperature: float = 1.0) -> jax.Array:
    """[num_samples, H, W, C] drawn with every prior's std scaled by `temperature` (Glow's
    "temperature": below 1 trades diversity for cleaner samples)."""
    keys = jax.random.split(rng, len(self.latent_shapes()))
    latents = tuple(temperature * jax.random.normal(key, (num_samples, *shape))
                    for key, shape in zip(keys, self.latent_shapes()))
    return self.inverse(latents)
