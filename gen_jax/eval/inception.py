"""Inception-v3 (Szegedy et al. 2016, "Rethinking the Inception architecture") in its FID variant
(Heusel et al. 2017), for the Fréchet Inception Distance.

The network is the one pytorch-fid runs (github.com/mseitzer/pytorch-fid, src/pytorch_fid/
inception.py: torchvision's Inception3 with FIDInceptionA/C/E_1/E_2 blocks), which matches the
graph of the TF FID reference (github.com/bioinf-jku/TTUR): average pools that do not count the
zero padding (TF's), a max pool in the last block's pool branch, inputs bilinearly resized to
299x299 (F.interpolate, align_corners=False, no antialiasing) in [-1, 1], and the 2048-d "pool3"
features (the spatial mean after Mixed_7c). pytorch-fid reports its FIDs within ~0.1% of the TF
code's (the resize differs); images quantized to 8 bits first, as pytorch-fid reads PNG files,
give the comparable number.

Weights are never downloaded here. Get pytorch-fid's release file (TF's inception-2015-12-05
ported to PyTorch):
  https://github.com/mseitzer/pytorch-fid/releases/download/fid_weights/pt_inception-2015-12-05-6726825d.pth
and convert its state_dict once, with torch, to a file this module reads (.npz or .safetensors,
tensor names unchanged):
  import numpy as np, torch
  state_dict = torch.load("pt_inception-2015-12-05-6726825d.pth", map_location="cpu")
  np.savez("pt_inception-2015-12-05.npz", **{k: v.numpy() for k, v in state_dict.items()})
torchvision's ImageNet Inception weights have the same names but other values (and a 1000-way fc):
they give different FIDs, and the loader refuses them.

The parameters are loaded, never trained, so they carry no logical axis names: they are replicated.
The table below is pytorch-fid's state_dict layout; tests check it against the Flax modules' shapes.
"""
import os

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from gen_jax.eval.frechet import frechet_distance_of_features

INPUT_SIZE = 299
FEATURE_DIM = 2048
BATCH_NORM_EPS = 1e-3
# Fixed rather than the backend default, so that a TPU's bf16 passes or a GPU's TF32 do not move
# the features (an FID is compared across machines).
PRECISION = jax.lax.Precision.HIGHEST

# Every BasicConv2d of pytorch-fid's network: name, in channels, out channels, kernel height,
# kernel width. State-dict keys are "<name>.conv.weight" [out, in, kh, kw] and
# "<name>.bn.{weight,bias,running_mean,running_var}" [out].
_CONV_TABLE = """
Conv2d_1a_3x3 3 32 3 3
Conv2d_2a_3x3 32 32 3 3
Conv2d_2b_3x3 32 64 3 3
Conv2d_3b_1x1 64 80 1 1
Conv2d_4a_3x3 80 192 3 3
Mixed_5b.branch1x1 192 64 1 1
Mixed_5b.branch5x5_1 192 48 1 1
Mixed_5b.branch5x5_2 48 64 5 5
Mixed_5b.branch3x3dbl_1 192 64 1 1
Mixed_5b.branch3x3dbl_2 64 96 3 3
Mixed_5b.branch3x3dbl_3 96 96 3 3
Mixed_5b.branch_pool 192 32 1 1
Mixed_5c.branch1x1 256 64 1 1
Mixed_5c.branch5x5_1 256 48 1 1
Mixed_5c.branch5x5_2 48 64 5 5
Mixed_5c.branch3x3dbl_1 256 64 1 1
Mixed_5c.branch3x3dbl_2 64 96 3 3
Mixed_5c.branch3x3dbl_3 96 96 3 3
Mixed_5c.branch_pool 256 64 1 1
Mixed_5d.branch1x1 288 64 1 1
Mixed_5d.branch5x5_1 288 48 1 1
Mixed_5d.branch5x5_2 48 64 5 5
Mixed_5d.branch3x3dbl_1 288 64 1 1
Mixed_5d.branch3x3dbl_2 64 96 3 3
Mixed_5d.branch3x3dbl_3 96 96 3 3
Mixed_5d.branch_pool 288 64 1 1
Mixed_6a.branch3x3 288 384 3 3
Mixed_6a.branch3x3dbl_1 288 64 1 1
Mixed_6a.branch3x3dbl_2 64 96 3 3
Mixed_6a.branch3x3dbl_3 96 96 3 3
""" + "".join(f"""
Mixed_6{block}.branch1x1 768 192 1 1
Mixed_6{block}.branch7x7_1 768 {c7} 1 1
Mixed_6{block}.branch7x7_2 {c7} {c7} 1 7
Mixed_6{block}.branch7x7_3 {c7} 192 7 1
Mixed_6{block}.branch7x7dbl_1 768 {c7} 1 1
Mixed_6{block}.branch7x7dbl_2 {c7} {c7} 7 1
Mixed_6{block}.branch7x7dbl_3 {c7} {c7} 1 7
Mixed_6{block}.branch7x7dbl_4 {c7} {c7} 7 1
Mixed_6{block}.branch7x7dbl_5 {c7} 192 1 7
Mixed_6{block}.branch_pool 768 192 1 1
""" for block, c7 in (("b", 128), ("c", 160), ("d", 160), ("e", 192))) + """
Mixed_7a.branch3x3_1 768 192 1 1
Mixed_7a.branch3x3_2 192 320 3 3
Mixed_7a.branch7x7x3_1 768 192 1 1
Mixed_7a.branch7x7x3_2 192 192 1 7
Mixed_7a.branch7x7x3_3 192 192 7 1
Mixed_7a.branch7x7x3_4 192 192 3 3
""" + "".join(f"""
Mixed_7{block}.branch1x1 {cin} 320 1 1
Mixed_7{block}.branch3x3_1 {cin} 384 1 1
Mixed_7{block}.branch3x3_2a 384 384 1 3
Mixed_7{block}.branch3x3_2b 384 384 3 1
Mixed_7{block}.branch3x3dbl_1 {cin} 448 1 1
Mixed_7{block}.branch3x3dbl_2 448 384 3 3
Mixed_7{block}.branch3x3dbl_3a 384 384 1 3
Mixed_7{block}.branch3x3dbl_3b 384 384 3 1
Mixed_7{block}.branch_pool {cin} 192 1 1
""" for block, cin in (("b", 1280), ("c", 2048)))

CONVS = tuple((name, *map(int, sizes)) for name, *sizes in
              (line.split() for line in _CONV_TABLE.strip().splitlines() if line))
_BN_LEAVES = {"weight": ("params", "scale"), "bias": ("params", "bias"),
              "running_mean": ("batch_stats", "mean"), "running_var": ("batch_stats", "var")}
# In the release file but unused by the pool3 features: the 1008-way classifier (checked, so that
# torchvision's 1000-way ImageNet weights are refused) and BatchNorm's step counters.
_UNUSED_SHAPES = {"fc.weight": (1008, FEATURE_DIM), "fc.bias": (1008,)}


def state_dict_shapes() -> dict[str, tuple[int, ...]]:
  """{pytorch-fid state_dict name: shape} of every tensor the features need."""
  shapes = {}
  for name, in_channels, out_channels, kernel_height, kernel_width in CONVS:
    shapes[f"{name}.conv.weight"] = (out_channels, in_channels, kernel_height, kernel_width)
    for leaf in _BN_LEAVES:
      shapes[f"{name}.bn.{leaf}"] = (out_channels,)
  return shapes


class BasicConv2d(nn.Module):
  """Convolution without bias, inference BatchNorm (eps 1e-3), ReLU: [n, H, W, C] -> [n, H', W',
  features]; `padding` is symmetric (rows, columns), as torch's."""
  features: int
  kernel_size: tuple[int, int]
  strides: int = 1
  padding: tuple[int, int] = (0, 0)

  @nn.compact
  def __call__(self, x):
    x = nn.Conv(self.features, self.kernel_size, strides=self.strides,
                padding=[(p, p) for p in self.padding], use_bias=False, precision=PRECISION,
                name="conv")(x)
    x = nn.BatchNorm(use_running_average=True, epsilon=BATCH_NORM_EPS, name="bn")(x)
    return nn.relu(x)


def _conv(name, features, kernel_size, strides=1, padding=0):
  # Integer kernel sizes and paddings mean the same for rows and columns, as in torch.
  if isinstance(kernel_size, int):
    kernel_size = (kernel_size, kernel_size)
  if isinstance(padding, int):
    padding = (padding, padding)
  return BasicConv2d(features, kernel_size, strides, padding, name=name)


def _avg_pool_3x3(x):
  """3x3 stride-1 mean over the unpadded neighbours only (TF's SAME average pool)."""
  return nn.avg_pool(x, (3, 3), (1, 1), ((1, 1), (1, 1)), count_include_pad=False)


def _max_pool_3x3(x, strides=2, padding=0):
  return nn.max_pool(x, (3, 3), (strides, strides), ((padding, padding), (padding, padding)))


class InceptionA(nn.Module):
  """FIDInceptionA: [n, 35, 35, C] -> [n, 35, 35, 224 + pool_features]."""
  pool_features: int

  @nn.compact
  def __call__(self, x):
    branch1x1 = _conv("branch1x1", 64, 1)(x)
    branch5x5 = _conv("branch5x5_2", 64, 5, padding=2)(_conv("branch5x5_1", 48, 1)(x))
    branch3x3dbl = _conv("branch3x3dbl_1", 64, 1)(x)
    branch3x3dbl = _conv("branch3x3dbl_2", 96, 3, padding=1)(branch3x3dbl)
    branch3x3dbl = _conv("branch3x3dbl_3", 96, 3, padding=1)(branch3x3dbl)
    branch_pool = _conv("branch_pool", self.pool_features, 1)(_avg_pool_3x3(x))
    return jnp.concatenate([branch1x1, branch5x5, branch3x3dbl, branch_pool], axis=-1)


class InceptionB(nn.Module):
  """torchvision's InceptionB (grid reduction): [n, 35, 35, 288] -> [n, 17, 17, 768]."""

  @nn.compact
  def __call__(self, x):
    branch3x3 = _conv("branch3x3", 384, 3, strides=2)(x)
    branch3x3dbl = _conv("branch3x3dbl_1", 64, 1)(x)
    branch3x3dbl = _conv("branch3x3dbl_2", 96, 3, padding=1)(branch3x3dbl)
    branch3x3dbl = _conv("branch3x3dbl_3", 96, 3, strides=2)(branch3x3dbl)
    return jnp.concatenate([branch3x3, branch3x3dbl, _max_pool_3x3(x)], axis=-1)


class InceptionC(nn.Module):
  """FIDInceptionC (factorized 7x7): [n, 17, 17, 768] -> [n, 17, 17, 768]."""
  channels_7x7: int

  @nn.compact
  def __call__(self, x):
    c7 = self.channels_7x7
    branch1x1 = _conv("branch1x1", 192, 1)(x)
    branch7x7 = _conv("branch7x7_1", c7, 1)(x)
    branch7x7 = _conv("branch7x7_2", c7, (1, 7), padding=(0, 3))(branch7x7)
    branch7x7 = _conv("branch7x7_3", 192, (7, 1), padding=(3, 0))(branch7x7)
    branch7x7dbl = _conv("branch7x7dbl_1", c7, 1)(x)
    branch7x7dbl = _conv("branch7x7dbl_2", c7, (7, 1), padding=(3, 0))(branch7x7dbl)
    branch7x7dbl = _conv("branch7x7dbl_3", c7, (1, 7), padding=(0, 3))(branch7x7dbl)
    branch7x7dbl = _conv("branch7x7dbl_4", c7, (7, 1), padding=(3, 0))(branch7x7dbl)
    branch7x7dbl = _conv("branch7x7dbl_5", 192, (1, 7), padding=(0, 3))(branch7x7dbl)
    branch_pool = _conv("branch_pool", 192, 1)(_avg_pool_3x3(x))
    return jnp.concatenate([branch1x1, branch7x7, branch7x7dbl, branch_pool], axis=-1)


class InceptionD(nn.Module):
  """torchvision's InceptionD (grid reduction): [n, 17, 17, 768] -> [n, 8, 8, 1280]."""

  @nn.compact
  def __call__(self, x):
    branch3x3 = _conv("branch3x3_2", 320, 3, strides=2)(_conv("branch3x3_1", 192, 1)(x))
    branch7x7x3 = _conv("branch7x7x3_1", 192, 1)(x)
    branch7x7x3 = _conv("branch7x7x3_2", 192, (1, 7), padding=(0, 3))(branch7x7x3)
    branch7x7x3 = _conv("branch7x7x3_3", 192, (7, 1), padding=(3, 0))(branch7x7x3)
    branch7x7x3 = _conv("branch7x7x3_4", 192, 3, strides=2)(branch7x7x3)
    return jnp.concatenate([branch3x3, branch7x7x3, _max_pool_3x3(x)], axis=-1)


class InceptionE(nn.Module):
  """FIDInceptionE_1 (pool "avg") / FIDInceptionE_2 (pool "max", as in TF's graph):
  [n, 8, 8, C] -> [n, 8, 8, 2048]."""
  pool: str

  @nn.compact
  def __call__(self, x):
    branch1x1 = _conv("branch1x1", 320, 1)(x)
    branch3x3 = _conv("branch3x3_1", 384, 1)(x)
    branch3x3 = jnp.concatenate([
        _conv("branch3x3_2a", 384, (1, 3), padding=(0, 1))(branch3x3),
        _conv("branch3x3_2b", 384, (3, 1), padding=(1, 0))(branch3x3)], axis=-1)
    branch3x3dbl = _conv("branch3x3dbl_1", 448, 1)(x)
    branch3x3dbl = _conv("branch3x3dbl_2", 384, 3, padding=1)(branch3x3dbl)
    branch3x3dbl = jnp.concatenate([
        _conv("branch3x3dbl_3a", 384, (1, 3), padding=(0, 1))(branch3x3dbl),
        _conv("branch3x3dbl_3b", 384, (3, 1), padding=(1, 0))(branch3x3dbl)], axis=-1)
    pooled = _avg_pool_3x3(x) if self.pool == "avg" else _max_pool_3x3(x, strides=1, padding=1)
    branch_pool = _conv("branch_pool", 192, 1)(pooled)
    return jnp.concatenate([branch1x1, branch3x3, branch3x3dbl, branch_pool], axis=-1)


def resize_bilinear(images, size: tuple[int, int]):
  """images [n, H, W, C] -> [n, size[0], size[1], C], as torch's F.interpolate(mode="bilinear",
  align_corners=False): half-pixel centres, edge clamping, no antialiasing when shrinking."""
  return jax.image.resize(images, (images.shape[0], *size, images.shape[-1]), "bilinear",
                          antialias=False)


class FIDInceptionV3(nn.Module):
  """images [n, H, W, 3] in [-1, 1] -> pool3 features [n, 2048]."""

  @nn.compact
  def __call__(self, images):
    x = resize_bilinear(images, (INPUT_SIZE, INPUT_SIZE))
    x = _conv("Conv2d_1a_3x3", 32, 3, strides=2)(x)  # [n, 149, 149, 32]
    x = _conv("Conv2d_2a_3x3", 32, 3)(x)  # [n, 147, 147, 32]
    x = _conv("Conv2d_2b_3x3", 64, 3, padding=1)(x)  # [n, 147, 147, 64]
    x = _max_pool_3x3(x)  # [n, 73, 73, 64]
    x = _conv("Conv2d_3b_1x1", 80, 1)(x)  # [n, 73, 73, 80]
    x = _conv("Conv2d_4a_3x3", 192, 3)(x)  # [n, 71, 71, 192]
    x = _max_pool_3x3(x)  # [n, 35, 35, 192]
    x = InceptionA(32, name="Mixed_5b")(x)  # [n, 35, 35, 256]
    x = InceptionA(64, name="Mixed_5c")(x)  # [n, 35, 35, 288]
    x = InceptionA(64, name="Mixed_5d")(x)  # [n, 35, 35, 288]
    x = InceptionB(name="Mixed_6a")(x)  # [n, 17, 17, 768]
    for block, channels_7x7 in (("b", 128), ("c", 160), ("d", 160), ("e", 192)):
      x = InceptionC(channels_7x7, name=f"Mixed_6{block}")(x)  # [n, 17, 17, 768]
    x = InceptionD(name="Mixed_7a")(x)  # [n, 8, 8, 1280]
    x = InceptionE("avg", name="Mixed_7b")(x)  # [n, 8, 8, 2048]
    x = InceptionE("max", name="Mixed_7c")(x)  # [n, 8, 8, 2048]
    return x.mean(axis=(1, 2))  # [n, 2048]


def _set(tree: dict, path: tuple[str, ...], value) -> None:
  for key in path[:-1]:
    tree = tree.setdefault(key, {})
  tree[path[-1]] = value


def variables_from_state_dict(state_dict: dict, source: str = "state dict") -> dict:
  """Flax variables {"params", "batch_stats"} of FIDInceptionV3 from pytorch-fid's state_dict
  {name: array}; ValueError names every missing, unexpected or misshapen tensor."""
  expected = state_dict_shapes()
  missing = sorted(set(expected) - set(state_dict))
  unexpected, misshapen = [], []
  for name, value in state_dict.items():
    shape = _UNUSED_SHAPES.get(name, () if name.endswith(".bn.num_batches_tracked") else None)
    shape = expected.get(name, shape)
    if shape is None:
      unexpected.append(name)
    elif tuple(np.shape(value)) != shape:
      misshapen.append(f"{name}: {tuple(np.shape(value))}, expected {shape}")
  if missing or unexpected or misshapen:
    problems = [f"{label} ({len(items)}): {', '.join(items[:12])}{', ...' * (len(items) > 12)}"
                for label, items in (("missing", missing), ("unexpected", sorted(unexpected)),
                                     ("wrong shape", misshapen)) if items]
    raise ValueError(f"{source}: not pytorch-fid's pt_inception-2015-12-05 state_dict; "
                     + "; ".join(problems))
  variables = {"params": {}, "batch_stats": {}}
  for name, *_ in CONVS:
    path = tuple(name.split("."))
    kernel = np.asarray(state_dict[f"{name}.conv.weight"], np.float32)
    # torch [out, in, kh, kw] -> flax [kh, kw, in, out].
    _set(variables["params"], path + ("conv", "kernel"), kernel.transpose(2, 3, 1, 0))
    for leaf, (collection, flax_name) in _BN_LEAVES.items():
      _set(variables[collection], path + ("bn", flax_name),
           np.asarray(state_dict[f"{name}.bn.{leaf}"], np.float32))
  return variables


def load_inception_params(path: str) -> dict:
  """Flax variables of FIDInceptionV3 from a .npz or .safetensors file holding pytorch-fid's
  state_dict under its own names (see the module docstring for where it comes from)."""
  if not os.path.exists(path):
    raise ValueError(f"{path}: no such file (Inception weights are never downloaded; see "
                     "gen_jax/eval/inception.py for pytorch-fid's release file)")
  if path.endswith(".npz"):
    with np.load(path) as archive:
      state_dict = {name: archive[name] for name in archive.files}
  elif path.endswith(".safetensors"):
    from safetensors import numpy as safetensors_np
    state_dict = safetensors_np.load_file(path)
  else:
    raise ValueError(f"{path}: Inception weights must be a .npz or .safetensors file (convert "
                     "pytorch-fid's .pth as the gen_jax/eval/inception.py docstring shows)")
  return variables_from_state_dict(state_dict, source=path)


@jax.jit
def _features_batch(variables, images):
  return FIDInceptionV3().apply(variables, images)


def inception_features(variables: dict, images, batch_size: int = 50) -> np.ndarray:
  """pool3 features [n, 2048] (float32) of images [n, H, W, 3 or 1] in [-1, 1]; grey images are
  repeated to 3 channels. Runs in batches of `batch_size` (the last one padded, so that one
  compiled shape serves every batch)."""
  images = np.asarray(images, np.float32)
  if images.ndim != 4 or images.shape[-1] not in (1, 3):
    raise ValueError(f"images must be [n, H, W, 3 or 1], got shape {images.shape}")
  if images.shape[0] == 0:
    raise ValueError("no images")
  low, high = float(images.min()), float(images.max())
  if not (np.isfinite(low) and np.isfinite(high) and -1.001 <= low and high <= 1.001):
    raise ValueError(f"images must lie in [-1, 1], got values in [{low}, {high}]")
  if batch_size < 1:
    raise ValueError(f"batch_size: must be positive, got {batch_size}")
  if images.shape[-1] == 1:
    images = np.repeat(images, 3, axis=-1)
  variables = jax.device_put(variables)  # Once, not with every batch (88 MB of weights).
  n = images.shape[0]
  batch_size = min(batch_size, n)
  features = []
  for start in range(0, n, batch_size):
    batch = images[start:start + batch_size]
    padded = np.zeros((batch_size, *images.shape[1:]), np.float32)
    padded[:len(batch)] = batch
    features.append(np.asarray(_features_batch(variables, padded))[:len(batch)])
  return np.concatenate(features)


def fid(images_a, images_b, weights_path: str, batch_size: int = 50) -> float:
  """Fréchet Inception Distance between two image sets [n, H, W, 3 or 1] in [-1, 1], with the
  Inception weights at `weights_path`. Published FIDs use 50,000 samples against the training set;
  the estimate is biased upwards for small n (and the covariances are singular below 2048)."""
  variables = load_inception_params(weights_path)
  return frechet_distance_of_features(inception_features(variables, images_a, batch_size),
                                      inception_features(variables, images_b, batch_size))
