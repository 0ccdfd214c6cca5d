"""FID Inception-v3: the pytorch-fid state_dict table against the Flax modules and a published
parameter count, the loader, and the layers against numpy formulas of torch's ops.

The full 299x299 forward (about 6 s to compile on a 2-core CPU) is not run here; it was checked by
hand against pytorch-fid's own InceptionV3 on random weights (see the issue notes).
"""
import jax
import numpy as np
import pytest
from safetensors import numpy as safetensors_np

from gen_jax.eval import inception

pytestmark = pytest.mark.xdist_group("inception")


@pytest.fixture(scope="module")
def state_dict():
  """Random tensors under pytorch-fid's names, with the extras its release file carries."""
  rng = np.random.default_rng(0)
  tensors = {name: rng.standard_normal(shape, np.float32) * 0.1
             for name, shape in inception.state_dict_shapes().items()}
  for name in list(tensors):
    if name.endswith("running_var"):
      tensors[name] = np.abs(tensors[name]) + 0.5
      tensors[name.replace("running_var", "num_batches_tracked")] = np.array(0, np.int64)
  tensors["fc.weight"] = np.zeros((1008, 2048), np.float32)
  tensors["fc.bias"] = np.zeros((1008,), np.float32)
  return tensors


@pytest.fixture(scope="module")
def variables(state_dict, tmp_path_factory):
  path = str(tmp_path_factory.mktemp("inception") / "pt_inception.npz")
  np.savez(path, **state_dict)
  return inception.load_inception_params(path)


def test_table_matches_module_and_published_parameter_count(variables):
  # One trace gives the variables' shapes and the features' shape (any input size: it resizes).
  features, shapes = jax.eval_shape(inception.FIDInceptionV3().init_with_output,
                                    jax.random.key(0), jax.ShapeDtypeStruct((2, 40, 30, 3),
                                                                            np.float32))
  assert features.shape == (2, inception.FEATURE_DIM)
  expected = {jax.tree_util.keystr(path): leaf.shape
              for path, leaf in jax.tree_util.tree_leaves_with_path(shapes)}
  loaded = {jax.tree_util.keystr(path): leaf.shape
            for path, leaf in jax.tree_util.tree_leaves_with_path(variables)}
  assert loaded == expected
  assert len(expected) == 94 * 5
  # Keras' InceptionV3(include_top=False) has the same convolutions and BatchNorms without a
  # scale: 21,802,784 parameters (conv kernels + beta, moving mean, moving variance).
  table = inception.state_dict_shapes()
  conv = sum(np.prod(shape) for name, shape in table.items() if name.endswith("conv.weight"))
  channels = sum(shape[0] for name, shape in table.items() if name.endswith("bn.running_var"))
  assert conv + 3 * channels == 21_802_784


def test_loader_formats_and_errors(state_dict, variables, tmp_path):
  params = variables["params"]
  weight = state_dict["Mixed_6b.branch7x7_2.conv.weight"]  # [out, in, 1, 7]
  np.testing.assert_array_equal(params["Mixed_6b"]["branch7x7_2"]["conv"]["kernel"][0, :, 5, 9],
                                weight[9, 5, 0, :])
  np.testing.assert_array_equal(variables["batch_stats"]["Mixed_7c"]["branch_pool"]["bn"]["var"],
                                state_dict["Mixed_7c.branch_pool.bn.running_var"])
  np.testing.assert_array_equal(params["Conv2d_1a_3x3"]["bn"]["scale"],
                                state_dict["Conv2d_1a_3x3.bn.weight"])

  path = str(tmp_path / "weights.safetensors")
  safetensors_np.save_file(state_dict, path)
  from_safetensors = inception.load_inception_params(path)
  assert all(np.array_equal(a, b) for a, b in
             zip(jax.tree.leaves(from_safetensors), jax.tree.leaves(variables)))

  broken = dict(state_dict)
  del broken["Mixed_5c.branch5x5_2.conv.weight"]
  broken["AuxLogits.fc.weight"] = np.zeros((1000, 768), np.float32)
  broken["fc.weight"] = np.zeros((1000, 2048), np.float32)  # torchvision's ImageNet classifier
  broken["Mixed_6e.branch1x1.bn.bias"] = np.zeros(7, np.float32)
  with pytest.raises(ValueError) as error:
    inception.variables_from_state_dict(broken, source="w.npz")
  message = str(error.value)
  for part in ("w.npz", "missing (1): Mixed_5c.branch5x5_2.conv.weight",
               "unexpected (1): AuxLogits.fc.weight",
               "fc.weight: (1000, 2048), expected (1008, 2048)",
               "Mixed_6e.branch1x1.bn.bias: (7,), expected (192,)"):
    assert part in message
  with pytest.raises(ValueError, match="no such file"):
    inception.load_inception_params(str(tmp_path / "absent.npz"))
  torch_file = tmp_path / "pt_inception.pth"
  torch_file.write_bytes(b"")
  with pytest.raises(ValueError, match=r"\.npz or \.safetensors"):
    inception.load_inception_params(str(torch_file))
  with pytest.raises(ValueError, match=r"\[-1, 1\]"):
    inception.inception_features(variables, np.full((1, 8, 8, 3), 255.0))
  with pytest.raises(ValueError, match="3 or 1"):
    inception.inception_features(variables, np.zeros((1, 8, 8, 2)))


def _numpy_basic_conv(x, state_dict, name, stride, padding):
  """torch's Conv2d (cross-correlation, weight [out, in, kh, kw]) + BatchNorm2d(eps=1e-3) + ReLU
  on x [n, H, W, C]."""
  weight = state_dict[f"{name}.conv.weight"].astype(np.float64)
  kernel_height, kernel_width = weight.shape[2:]
  x = np.pad(x.astype(np.float64), ((0, 0), (padding[0],) * 2, (padding[1],) * 2, (0, 0)))
  out_height = (x.shape[1] - kernel_height) // stride + 1
  out_width = (x.shape[2] - kernel_width) // stride + 1
  out = 0
  for i in range(kernel_height):
    for j in range(kernel_width):
      window = x[:, i:i + stride * out_height:stride, j:j + stride * out_width:stride]
      out = out + window @ weight[:, :, i, j].T
  bn = {leaf: state_dict[f"{name}.bn.{leaf}"] for leaf in
        ("weight", "bias", "running_mean", "running_var")}
  out = (out - bn["running_mean"]) / np.sqrt(bn["running_var"] + 1e-3) * bn["weight"] + bn["bias"]
  return np.maximum(out, 0)


def test_conv_layers_match_numpy(state_dict, variables):
  rng = np.random.default_rng(1)
  for name, in_channels, stride, kernel, padding, shape in (
      ("Conv2d_1a_3x3", 3, 2, (3, 3), (0, 0), (2, 9, 8)),
      ("Mixed_6b.branch7x7_2", 128, 1, (1, 7), (0, 3), (1, 5, 9)),
      ("Mixed_6b.branch7x7_3", 128, 1, (7, 1), (3, 0), (1, 8, 3))):
    x = rng.normal(size=(*shape, in_channels)).astype(np.float32)
    scope = variables
    for part in name.split("."):
      scope = {collection: tree[part] for collection, tree in scope.items()}
    out_channels = state_dict[f"{name}.conv.weight"].shape[0]
    layer = inception.BasicConv2d(out_channels, kernel, stride, padding)
    np.testing.assert_allclose(jax.jit(layer.apply)(scope, x),
                               _numpy_basic_conv(x, state_dict, name, stride, padding),
                               rtol=1e-4, atol=1e-5)


def _torch_bilinear_matrix(in_size, out_size):
  """Rows of F.interpolate(mode="bilinear", align_corners=False) along one axis."""
  matrix = np.zeros((out_size, in_size))
  for o in range(out_size):
    source = max((o + 0.5) * in_size / out_size - 0.5, 0.0)
    low = int(np.floor(source))
    high, fraction = min(low + 1, in_size - 1), source - low
    matrix[o, low] += 1 - fraction
    matrix[o, high] += fraction
  return matrix


def test_pools_and_resize_match_torch_formulas():
  rng = np.random.default_rng(2)
  x = rng.normal(size=(2, 5, 6, 3)).astype(np.float32)
  padded = np.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)), constant_values=np.nan)
  windows = np.stack([padded[:, i:i + 5, j:j + 6] for i in range(3) for j in range(3)])
  # TF / FIDInception average pool: the mean of the in-image neighbours only.
  np.testing.assert_allclose(inception._avg_pool_3x3(x), np.nanmean(windows, axis=0), rtol=1e-6)
  np.testing.assert_allclose(inception._max_pool_3x3(x, strides=1, padding=1),
                             np.nanmax(windows, axis=0))
  np.testing.assert_allclose(inception._max_pool_3x3(x), np.max(
      [x[:, i:i + 3:2, j:j + 3:2] for i in range(3) for j in range(3)], axis=0))
  # The corner: 4 in-image values, so the zero-padded mean (torch's default) would be 4/9 of it.
  np.testing.assert_allclose(inception._avg_pool_3x3(x)[:, 0, 0], x[:, :2, :2].mean((1, 2)),
                             rtol=1e-6)

  image = rng.uniform(-1, 1, size=(2, 7, 12, 3)).astype(np.float32)
  resize = jax.jit(inception.resize_bilinear, static_argnums=1)  # Eager resizing compiles more.
  for size in ((17, 5), (3, 299)):  # Rows up and columns down, then the other way round.
    expected = np.einsum("oh,nhwc,pw->nopc", _torch_bilinear_matrix(7, size[0]), image,
                         _torch_bilinear_matrix(12, size[1]))
    np.testing.assert_allclose(resize(image, size), expected, atol=1e-5)
