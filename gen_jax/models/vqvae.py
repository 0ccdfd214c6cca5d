"""Vector-quantized VAE (van den Oord et al., 2017, "Neural Discrete Representation Learning").

The encoder maps an image to a grid of vectors z_e [b, h, w, code_dim]; the quantizer replaces
each with its nearest codebook entry z_q (its index is the discrete latent, the "code"); the
decoder maps the quantized grid to the parameters of a discretized logistic likelihood per pixel
(Salimans et al., 2017), as the VAE's does, so -log p(x | codes) is the cost in nats of the actual
discrete pixel values.

The quantizer's gradient is the straight-through estimator: the decoder reads z_q in the forward
pass and its gradient with respect to z_q reaches z_e unchanged. The codebook is not trained by
gradient: it is an exponential moving average of the encoder outputs assigned to each code
(Razavi et al., 2019, "VQ-VAE-2", appendix), kept in three parameter leaves that the family sets
every step from batch statistics (gen_jax.objectives.vqvae.ema_codebook_update):
`cluster_size` [K] (EMA of each code's usage count), `embed_sum` [K, D] (EMA of the sum of its
assigned vectors) and `codebook` [K, D] = embed_sum / Laplace-smoothed cluster_size. The model
reads the codebook under stop_gradient, so the loss's gradient never reaches the three.

`CodePrior` is the autoregressive prior over a VQ-VAE's codes: gen_jax's decoder-only Transformer
on [start, (class), codes in raster order], its next-token distribution restricted to the tokens
that can come at each position.
"""
import dataclasses

import flax.linen as nn
import jax
import jax.numpy as jnp

from gen_jax.models.layers import partitioned
from gen_jax.models.transformer import Transformer, TransformerConfig


@dataclasses.dataclass(frozen=True)
class VQVAEConfig:
  """Hyperparameters of the VQ-VAE; the fields of `config.model` for the vqvae family."""
  image_size: int  # Square images, divisible by 2 ** len(channels).
  image_channels: int
  channels: tuple[int, ...]  # Encoder conv widths; each stage halves the resolution.
  num_res_blocks: int  # Residual blocks at the latent resolution, in the encoder and decoder.
  num_codes: int  # K, the codebook size.
  code_dim: int  # D, the width of each code vector.
  dtype: str = "float32"
  param_dtype: str = "float32"

  @classmethod
  def from_config(cls, model_config) -> "VQVAEConfig":
    fields = model_config.to_dict()
    fields["channels"] = tuple(fields["channels"])
    return cls(**fields)

  @property
  def latent_size(self) -> int:
    """h = w of the code grid: image_size / 2 ** len(channels)."""
    return self.image_size // 2 ** len(self.channels)


def _conv_init():
  return partitioned(nn.initializers.lecun_normal(), ("conv_height", "conv_width", None, "mlp"))


def _norm_act(x: jax.Array, dtype) -> jax.Array:
  return nn.silu(nn.GroupNorm(num_groups=min(8, x.shape[-1]), dtype=dtype)(x))


class ResBlock(nn.Module):
  """x + conv1x1(act(conv3x3(act(x)))), the VQ-VAE paper's residual block (pre-activation)."""
  dtype: jnp.dtype
  param_dtype: jnp.dtype

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    """x [b, h, w, c] -> [b, h, w, c]."""
    conv = dict(dtype=self.dtype, param_dtype=self.param_dtype, kernel_init=_conv_init())
    h = nn.Conv(x.shape[-1], (3, 3), **conv)(_norm_act(x, self.dtype))
    h = nn.Conv(x.shape[-1], (1, 1), **conv)(_norm_act(h, self.dtype))
    return x + h


class Encoder(nn.Module):
  config: VQVAEConfig

  @nn.compact
  def __call__(self, images: jax.Array) -> jax.Array:
    """images [b, H, W, C] in [-1, 1] -> z_e [b, h, w, code_dim] float32 (h = H / 2^L)."""
    c = self.config
    dtype, param_dtype = jnp.dtype(c.dtype), jnp.dtype(c.param_dtype)
    x = images.astype(dtype)
    for index, width in enumerate(c.channels):
      if index:  # The first conv reads the pixels themselves.
        x = _norm_act(x, dtype)
      x = nn.Conv(width, (4, 4), strides=(2, 2), dtype=dtype, param_dtype=param_dtype,
                  kernel_init=_conv_init())(x)
    for _ in range(c.num_res_blocks):
      x = ResBlock(dtype, param_dtype)(x)
    z = nn.Conv(c.code_dim, (1, 1), dtype=jnp.float32, param_dtype=param_dtype,
                kernel_init=_conv_init())(_norm_act(x, dtype))
    return z.astype(jnp.float32)


class Decoder(nn.Module):
  config: VQVAEConfig

  @nn.compact
  def __call__(self, z: jax.Array) -> tuple[jax.Array, jax.Array]:
    """z [b, h, w, code_dim] -> (pixel means in [-1, 1], log scales), each [b, H, W, C]."""
    c = self.config
    dtype, param_dtype = jnp.dtype(c.dtype), jnp.dtype(c.param_dtype)
    x = nn.Conv(c.channels[-1], (3, 3), dtype=dtype, param_dtype=param_dtype,
                kernel_init=_conv_init())(z.astype(dtype))  # [b, h, w, channels[-1]]
    for _ in range(c.num_res_blocks):
      x = ResBlock(dtype, param_dtype)(x)
    for width in reversed(c.channels):
      x = nn.ConvTranspose(width, (4, 4), strides=(2, 2), dtype=dtype, param_dtype=param_dtype,
                           kernel_init=_conv_init())(_norm_act(x, dtype))
    out = nn.Conv(2 * c.image_channels, (3, 3), dtype=jnp.float32, param_dtype=param_dtype,
                  kernel_init=_conv_init())(_norm_act(x, dtype))  # [b, H, W, 2C]
    mean, log_scale = jnp.split(out.astype(jnp.float32), 2, axis=-1)
    return jnp.tanh(mean), jnp.maximum(log_scale, -7.0)


def nearest_codes(vectors: jax.Array, codebook: jax.Array) -> jax.Array:
  """Index of the nearest codebook entry (squared Euclidean distance) of each vector.

  Args:
    vectors: [..., D]; codebook: [K, D].
  Returns:
    [...] int32 in [0, K).
  """
  vectors, codebook = vectors.astype(jnp.float32), codebook.astype(jnp.float32)
  # ||z - e||^2 = ||z||^2 - 2 z.e + ||e||^2, without materializing [..., K, D].
  distances = (jnp.sum(vectors ** 2, axis=-1, keepdims=True) - 2 * vectors @ codebook.T
               + jnp.sum(codebook ** 2, axis=-1))  # [..., K]
  return jnp.argmin(distances, axis=-1).astype(jnp.int32)


def straight_through(z_e: jax.Array, z_q: jax.Array) -> jax.Array:
  """z_q in the forward pass; the gradient with respect to the result passes to z_e unchanged."""
  return z_e + jax.lax.stop_gradient(z_q - z_e)


class VectorQuantizer(nn.Module):
  """The codebook and its EMA statistics (leaves codebook, cluster_size, embed_sum; float32).

  The codebook starts small and uniform (the VQ-VAE paper's init); cluster_size at one and
  embed_sum at the codebook, so that embed_sum / cluster_size is the codebook from the start. The
  family's dead-code restarts move unused entries onto encoder outputs within the first steps.
  """
  num_codes: int
  code_dim: int

  def setup(self):
    bound = 1.0 / self.num_codes
    shape = (self.num_codes, self.code_dim)
    uniform = lambda rng, s: jax.random.uniform(rng, s, jnp.float32, -bound, bound)  # noqa: E731
    self.codebook = self.param("codebook", partitioned(uniform, (None, None)), shape)
    self.cluster_size = self.param("cluster_size",
                                   partitioned(nn.initializers.ones, (None,)), (self.num_codes,))
    self.embed_sum = self.param("embed_sum",
                                partitioned(lambda rng, s: self.codebook, (None, None)), shape)

  def __call__(self, z_e: jax.Array) -> tuple[jax.Array, jax.Array]:
    """z_e [..., D] -> (z_q [..., D], codes [...] int32); z_q carries no gradient."""
    codebook = jax.lax.stop_gradient(self.codebook)  # Set by EMA, never by the gradient.
    codes = nearest_codes(z_e, codebook)
    return codebook[codes], codes

  def lookup(self, codes: jax.Array) -> jax.Array:
    """codes [...] int -> their vectors [..., D]."""
    return jax.lax.stop_gradient(self.codebook)[codes]


class VQVAE(nn.Module):
  """Encoder -> nearest-code quantizer (straight-through) -> decoder."""
  config: VQVAEConfig

  def setup(self):
    c = self.config
    self.encoder = Encoder(c)
    self.quantizer = VectorQuantizer(c.num_codes, c.code_dim)
    self.decoder = Decoder(c)

  def __call__(self, images: jax.Array) -> dict:
    """images [b, H, W, C] in [-1, 1] -> {"decoded": (mean, log_scale) each [b, H, W, C],
    "z_e", "z_q": [b, h, w, D], "codes": [b, h, w] int32}."""
    z_e = self.encoder(images)
    z_q, codes = self.quantizer(z_e)
    decoded = self.decoder(straight_through(z_e, z_q))
    return {"decoded": decoded, "z_e": z_e, "z_q": z_q, "codes": codes}

  def encode(self, images: jax.Array) -> jax.Array:
    """images [b, H, W, C] -> z_e [b, h, w, D] (before quantization)."""
    return self.encoder(images)

  def encode_codes(self, images: jax.Array) -> jax.Array:
    """images [b, H, W, C] -> codes [b, h, w] int32."""
    return self.quantizer(self.encoder(images))[1]

  def decode(self, z_q: jax.Array) -> tuple[jax.Array, jax.Array]:
    """z_q [b, h, w, D] -> (mean, log_scale), each [b, H, W, C]."""
    return self.decoder(z_q)

  def decode_codes(self, codes: jax.Array) -> tuple[jax.Array, jax.Array]:
    """codes [b, h, w] int -> (mean, log_scale), each [b, H, W, C]."""
    return self.decoder(self.quantizer.lookup(codes))


NEG_INF = -1e9  # Logit of a token that cannot come next: probability exactly 0 in float32.


class CodePrior(nn.Module):
  """An autoregressive prior over VQ-VAE codes: the decoder-only Transformer on sequences
  [start, class, c_1 .. c_N] (class-conditional, num_classes > 0) or [start, c_1 .. c_N].

  Token ids: codes 0..K-1, class y is K + y, the start token K + num_classes (vocab_size =
  K + num_classes + 1). The output at position p predicts the token at p + 1: a class token at
  position 0 of a class-conditional prior, a code everywhere else; every other token's logit is
  NEG_INF, so the model's distributions (and its likelihoods) are over what can come there.
  Its call is the Transformer's (positions, segment_ids, a KV cache), so gen_jax.sampling's
  decoders run it as they run a language model.
  """
  config: TransformerConfig
  num_codes: int
  num_classes: int

  def allowed(self, positions: jax.Array) -> jax.Array:
    """positions [b, t] -> [b, t, vocab] bool: the tokens that can follow each position."""
    vocab = jnp.arange(self.config.vocab_size)
    is_code = vocab < self.num_codes
    is_class = (vocab >= self.num_codes) & (vocab < self.num_codes + self.num_classes)
    predicts_class = (positions == 0) & (self.num_classes > 0)  # [b, t]
    return jnp.where(predicts_class[..., None], is_class, is_code)

  @nn.compact
  def __call__(self, tokens: jax.Array, positions: jax.Array | None = None,
               segment_ids: jax.Array | None = None, *, cache: dict | None = None,
               cache_index: jax.Array | int = 0):
    """tokens [b, t] -> logits [b, t, vocab] float32 (with a cache: (logits, updated cache))."""
    if positions is None:
      positions = jnp.broadcast_to(jnp.arange(tokens.shape[1]), tokens.shape)
    transformer = Transformer(self.config, name="transformer")
    if cache is None:
      logits = transformer(tokens, positions, segment_ids)
    else:
      logits, cache = transformer(tokens, positions, segment_ids, cache=cache,
                                  cache_index=cache_index)
    logits = jnp.where(self.allowed(positions), logits, NEG_INF)
    return logits if cache is None else (logits, cache)
