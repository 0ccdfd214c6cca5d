"""Image sources: the Fashion-MNIST tfds builder on IDX files written here, folders and globs."""
import gzip

import ml_collections
import numpy as np
import pytest
from PIL import Image

from gen_jax.config.errors import ConfigError
from gen_jax.data import fashion_mnist
from gen_jax.data.images import load_images


def _data_config(**fields) -> ml_collections.ConfigDict:
  return ml_collections.ConfigDict({"source": "digits", "eval_fraction": 0.25, "tfds_data_dir": "",
                                    "manual_dir": "", **fields})


def _write_idx(path, array: np.ndarray) -> None:
  """The IDX format by its spec: 0, 0, type 0x08 (ubyte), ndim, big-endian uint32 dims, bytes."""
  header = bytes([0, 0, 0x08, array.ndim]) + b"".join(d.to_bytes(4, "big") for d in array.shape)
  with gzip.open(path, "wb") as f:
    f.write(header + array.astype(np.uint8).tobytes())


def test_fashion_mnist_builder_reads_the_idx_files_it_was_given(tmp_path, monkeypatch):
  rng = np.random.default_rng(0)
  manual = tmp_path / "raw"
  manual.mkdir()
  written = {}
  for split, prefix, n in (("train", "train", 12), ("test", "t10k", 6)):
    pixels = rng.integers(0, 256, (n, 28, 28), dtype=np.uint8)
    labels = rng.integers(0, 10, (n,), dtype=np.uint8)
    _write_idx(manual / f"{prefix}-images-idx3-ubyte.gz", pixels)
    _write_idx(manual / f"{prefix}-labels-idx1-ubyte.gz", labels)
    written[split] = (pixels, labels)
  config = _data_config(source="tfds:fashion_mnist_local", manual_dir=str(manual),
                        tfds_data_dir=str(tmp_path / "tfds"))
  data = load_images(config, 28, 1, seed=0)
  for arrays, split in ((data.train, "train"), (data.held_out, "test")):
    pixels, labels = written[split]
    assert arrays["images"].shape == (len(pixels), 28, 28, 1)
    assert arrays["images"].dtype == np.float32
    np.testing.assert_allclose(arrays["images"][..., 0], pixels / 255.0 * 2 - 1, atol=1e-6)
    np.testing.assert_array_equal(arrays["labels"], labels)
  assert data.num_levels == 256 and data.num_classes == 10
  assert data.class_names[0] == "T-shirt/top" and data.class_names[9] == "Ankle boot"

  # Prepared once: a second load reads tfds_data_dir alone, the raw files gone.
  for path in manual.iterdir():
    path.unlink()
  again = load_images(config, 28, 1, seed=1)
  np.testing.assert_array_equal(again.held_out["images"], data.held_out["images"])

  with pytest.raises(ConfigError, match=r"model.image_size: .* 28x28 images, the model takes 8x8"):
    load_images(config, 8, 1, seed=0)
  with pytest.raises(ConfigError, match=r"model.image_channels: .* 1 channel"):
    load_images(config, 28, 3, seed=0)

  # Unprepared, and no folder holds the files: the error names the field and where it looked.
  fresh = _data_config(source="tfds:fashion_mnist_local", manual_dir=str(manual),
                       tfds_data_dir=str(tmp_path / "tfds_fresh"))
  with pytest.raises(ConfigError, match=f"data.manual_dir: .*searched \\['{manual}'\\]"):
    load_images(fresh, 28, 1, seed=0)
  places = (str(tmp_path / "nowhere"), str(tmp_path / "elsewhere"))
  monkeypatch.setattr(fashion_mnist, "DEFAULT_MANUAL_DIRS", places)
  fresh.manual_dir = ""
  with pytest.raises(ConfigError, match=r"data.manual_dir: .*nowhere', '.*elsewhere'\]"):
    load_images(fresh, 28, 1, seed=0)
  with pytest.raises(ConfigError, match=r"data.source: unknown tfds source 'mnist'"):
    load_images(_data_config(source="tfds:mnist"), 28, 1, seed=0)


def _luma(rgb) -> float:
  """ITU-R 601-2 luma, PIL's "L" conversion."""
  r, g, b = rgb
  return r * 299 / 1000 + g * 587 / 1000 + b * 114 / 1000


def test_folders_and_globs_of_images(tmp_path):
  # 12x8 RGB images: a solid 8x8 center square in the image's own color, 2-pixel side strips in
  # white. A center crop keeps only the color; squashing the whole image would blend white in.
  colors = {"cat": [(200, 10, 10), (180, 40, 0), (250, 60, 30)],
            "dog": [(10, 20, 200), (0, 90, 160), (30, 30, 120)]}
  folder = tmp_path / "pets"
  for name, rgbs in colors.items():
    (folder / name).mkdir(parents=True)
    for i, rgb in enumerate(rgbs):
      pixels = np.full((8, 12, 3), 255, np.uint8)
      pixels[:, 2:10] = rgb
      Image.fromarray(pixels).save(folder / name / f"{i}.png")
  (folder / "dog" / "notes.txt").write_text("not an image")  # Skipped by its extension.

  data = load_images(_data_config(source=str(folder), eval_fraction=1 / 3), 4, 3, seed=0)
  assert data.class_names == ("cat", "dog") and data.num_levels == 256
  assert data.train["images"].shape == (4, 4, 4, 3)
  assert data.held_out["images"].shape == (2, 4, 4, 3)
  expected_label = {rgb: label for label, name in enumerate(colors) for rgb in colors[name]}
  seen = set()
  for arrays in (data.train, data.held_out):
    for image, label in zip(arrays["images"], arrays["labels"]):
      rgb = tuple(int(v) for v in np.round((image[0, 0] + 1) / 2 * 255))
      np.testing.assert_allclose(image, np.broadcast_to(np.array(rgb) / 255 * 2 - 1, image.shape),
                                 atol=1e-6)  # Every pixel the center color: cropped, not squashed.
      assert expected_label[rgb] == label
      seen.add(rgb)
  assert seen == set(expected_label)

  # A glob over both folders: the same images, grey, unlabelled.
  data = load_images(_data_config(source=str(folder / "**" / "*.png"), eval_fraction=0.5), 2, 1,
                     seed=0)
  assert data.class_names == () and data.train["images"].shape == (3, 2, 2, 1)
  greys = np.concatenate([data.train["images"], data.held_out["images"]])[:, 0, 0, 0]
  want = [_luma(rgb) / 255 * 2 - 1 for rgbs in colors.values() for rgb in rgbs]
  np.testing.assert_allclose(np.sort(greys), np.sort(want), atol=1.01 * 2 / 255)  # PIL rounds.
  assert not np.concatenate([data.train["labels"], data.held_out["labels"]]).any()

  # A flat folder: its images, unlabelled.
  flat = load_images(_data_config(source=str(folder / "cat"), eval_fraction=1 / 3), 8, 3, seed=0)
  assert flat.class_names == () and flat.train["images"].shape == (2, 8, 8, 3)

  with pytest.raises(ConfigError, match=r"data.source: .* nor a glob matching image files"):
    load_images(_data_config(source=str(tmp_path / "missing" / "*.png")), 8, 1, seed=0)
  with pytest.raises(ConfigError, match=r"data.source: .*notes.txt' is not an image PIL can read"):
    load_images(_data_config(source=str(folder / "dog" / "*")), 8, 1, seed=0)
  with pytest.raises(ConfigError, match=r"data.eval_fraction: 0.1 splits the 3 images .* into 3 "
                     r"train and 0 held-out"):
    load_images(_data_config(source=str(folder / "cat"), eval_fraction=0.1), 8, 1, seed=0)
  with pytest.raises(ConfigError, match=r"model.image_size: data 'digits' has 8x8 images, the "
                     r"model takes 16x16"):
    load_images(_data_config(), 16, 1, seed=0)
