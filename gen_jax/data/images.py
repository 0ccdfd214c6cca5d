"""Image datasets as arrays on a fixed pixel grid in [-1, 1], split into train and held-out.

Sources (config.data.source):
  "digits"                    sklearn's 8x8 digits (17 grey levels, 10 classes), embedded.
  "tfds:fashion_mnist_local"  Fashion-MNIST's IDX files through the repo's own tfds builder
                              (gen_jax.data.fashion_mnist); its test split is the held-out data.
  a folder                    ImageFolder's layout: one subfolder per class (sorted subfolder names
                              are the class names, label i is the i-th) or, without subfolders,
                              the folder's images unlabelled.
  a glob pattern              the image files it matches ("**" recurses), unlabelled.
Folder and glob images are decoded with PIL, converted to the model's channels (PIL's "L" luma
or "RGB"), center-cropped to their largest square, then resized to model.image_size with PIL's
antialiased Lanczos filter; 8-bit, so 256 levels. They are held in memory, like every source here.
"""
import dataclasses
import glob
import os

import numpy as np

from gen_jax.config.errors import ConfigError

DIGITS_LEVELS = 17  # sklearn digits pixels take the integer values 0..16.
DIGITS_CLASSES = tuple(str(d) for d in range(10))
EIGHT_BIT_LEVELS = 256
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff")
TFDS_PREFIX = "tfds:"


@dataclasses.dataclass(frozen=True)
class ImageData:
  """A source's images as {"images": [n, H, W, C] float32 in [-1, 1], "labels": [n] int32}.

  num_levels: distinct pixel values (17 for digits, 256 for 8-bit images), for discrete
  likelihoods and bits/dim. class_names: the label names (label i is class_names[i]); () when the
  source has no labels (its labels are then all 0).
  """
  train: dict[str, np.ndarray]
  held_out: dict[str, np.ndarray]
  num_levels: int
  class_names: tuple[str, ...]

  @property
  def num_classes(self) -> int:
    return len(self.class_names)


def split_examples(arrays: dict[str, np.ndarray], eval_fraction: float, seed: int
                   ) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
  """A seeded random split into (train, held-out)."""
  n = len(next(iter(arrays.values())))
  order = np.random.default_rng(seed).permutation(n)
  num_eval = int(round(n * eval_fraction))
  held_out, train = order[:num_eval], order[num_eval:]
  return ({k: v[train] for k, v in arrays.items()}, {k: v[held_out] for k, v in arrays.items()})


def _digits(data_config, seed: int) -> ImageData:
  # sklearn.datasets.load_digits reads this file, which ships inside the scikit-learn wheel; read
  # directly, it spares every run sklearn's import (about 2 s).
  import importlib.util
  package = importlib.util.find_spec("sklearn").submodule_search_locations[0]
  table = np.loadtxt(os.path.join(package, "datasets", "data", "digits.csv.gz"), delimiter=",")
  images = table[:, :64].reshape(-1, 8, 8, 1).astype(np.float32)  # [1797, 8, 8, 1], values 0..16
  images = images / (DIGITS_LEVELS - 1) * 2.0 - 1.0
  arrays = {"images": images, "labels": table[:, 64].astype(np.int32)}
  train, held_out = split_examples(arrays, data_config.eval_fraction, seed)
  return ImageData(train, held_out, DIGITS_LEVELS, DIGITS_CLASSES)


def _from_uint8(pixels: np.ndarray) -> np.ndarray:
  """uint8 pixels -> float32 in [-1, 1], 0 -> -1 and 255 -> 1."""
  return pixels.astype(np.float32) / (EIGHT_BIT_LEVELS - 1) * 2.0 - 1.0


def _fashion_mnist(data_config) -> ImageData:
  from gen_jax.data import fashion_mnist  # Imports tensorflow_datasets: only when asked for.
  splits = fashion_mnist.load_fashion_mnist(data_config.manual_dir, data_config.tfds_data_dir)
  train, test = ({"images": _from_uint8(s["images"]), "labels": s["labels"]}
                 for s in (splits["train"], splits["test"]))
  return ImageData(train, test, EIGHT_BIT_LEVELS, fashion_mnist.CLASS_NAMES)


# The tfds builders the repo defines, by the name after "tfds:".
TFDS_SOURCES = {"fashion_mnist_local": _fashion_mnist}


def _is_image_file(path: str) -> bool:
  return os.path.isfile(path) and path.lower().endswith(IMAGE_EXTENSIONS)


def _files_under(folder: str) -> list[str]:
  """Image files anywhere under `folder`, in sorted order."""
  found = []
  for root, dirs, files in os.walk(folder):
    dirs.sort()
    found += [os.path.join(root, f) for f in sorted(files) if _is_image_file(os.path.join(root, f))]
  return found


def _image_files(source: str) -> tuple[list[str], list[int], tuple[str, ...]]:
  """(paths, labels, class names) of a folder or glob source; ConfigError if it holds none."""
  if os.path.isdir(source):
    entries = sorted(e for e in os.listdir(source) if not e.startswith("."))
    class_dirs = [e for e in entries if os.path.isdir(os.path.join(source, e))]
    loose = [e for e in entries if _is_image_file(os.path.join(source, e))]
    if not class_dirs:
      return [os.path.join(source, e) for e in loose], [0] * len(loose), ()
    if loose:
      raise ConfigError("data.source", f"{source!r} holds class subfolders {class_dirs} and loose "
                        f"images ({loose[0]!r}, ...): keep one layout")
    paths, labels = [], []
    for label, name in enumerate(class_dirs):
      files = _files_under(os.path.join(source, name))
      if not files:
        raise ConfigError("data.source", f"class subfolder {os.path.join(source, name)!r} holds "
                          f"no images ({', '.join(IMAGE_EXTENSIONS)})")
      paths += files
      labels += [label] * len(files)
    return paths, labels, tuple(class_dirs)
  paths = sorted(p for p in glob.glob(source, recursive=True) if os.path.isfile(p))
  return paths, [0] * len(paths), ()


def _decode(path: str, image_size: int, image_channels: int) -> np.ndarray:
  """One image file -> [image_size, image_size, image_channels] uint8 (center crop, Lanczos)."""
  from PIL import Image, UnidentifiedImageError
  try:
    with Image.open(path) as image:
      image = image.convert("L" if image_channels == 1 else "RGB")
  except (UnidentifiedImageError, OSError) as e:
    raise ConfigError("data.source", f"{path!r} is not an image PIL can read: {e}") from e
  width, height = image.size
  side = min(width, height)
  left, top = (width - side) // 2, (height - side) // 2
  image = image.crop((left, top, left + side, top + side))
  image = image.resize((image_size, image_size), Image.Resampling.LANCZOS)
  return np.asarray(image, np.uint8).reshape(image_size, image_size, image_channels)


def _image_folder(data_config, image_size: int, image_channels: int, seed: int) -> ImageData:
  source = data_config.source
  paths, labels, class_names = _image_files(source)
  if not paths:
    raise ConfigError("data.source", f"{source!r} is not 'digits', '{TFDS_PREFIX}<name>' (one of "
                      f"{sorted(TFDS_SOURCES)}), a folder holding images, nor a glob matching "
                      "image files")
  pixels = np.stack([_decode(p, image_size, image_channels) for p in paths])
  arrays = {"images": _from_uint8(pixels), "labels": np.asarray(labels, np.int32)}
  train, held_out = split_examples(arrays, data_config.eval_fraction, seed)
  if not len(train["labels"]) or not len(held_out["labels"]):
    raise ConfigError("data.eval_fraction", f"{data_config.eval_fraction} splits the {len(paths)} "
                      f"images of {source!r} into {len(train['labels'])} train and "
                      f"{len(held_out['labels'])} held-out; each needs at least one")
  return ImageData(train, held_out, EIGHT_BIT_LEVELS, class_names)


def load_images(data_config, image_size: int, image_channels: int, seed: int) -> ImageData:
  """Loads config.data's source, checked against the model's image shape.

  Args:
    data_config: the config's `data` section (source, eval_fraction, tfds_data_dir, manual_dir).
    image_size, image_channels: the shape the model takes; a source of another shape is a
      ConfigError naming model.image_size / model.image_channels.
    seed: the seed of the train/held-out split of sources without a test split.

  Digits and Fashion-MNIST have a fixed shape; folder and glob images are made to the model's.
  """
  source = data_config.source
  if source == "digits":
    data = _digits(data_config, seed)
  elif source.startswith(TFDS_PREFIX):
    name = source[len(TFDS_PREFIX):]
    if name not in TFDS_SOURCES:
      raise ConfigError("data.source", f"unknown tfds source {name!r}; the repo's builders are "
                        f"{sorted(TFDS_SOURCES)}")
    data = TFDS_SOURCES[name](data_config)
  else:  # A folder or a glob, made to the model's shape as it is read.
    data = _image_folder(data_config, image_size, image_channels, seed)
  shape = data.train["images"].shape[1:]
  if shape[:2] != (image_size, image_size):
    raise ConfigError("model.image_size", f"data {source!r} has {shape[0]}x{shape[1]} images, the "
                      f"model takes {image_size}x{image_size}")
  if shape[2] != image_channels:
    raise ConfigError("model.image_channels", f"data {source!r} has {shape[2]} channel(s), the "
                      f"model takes {image_channels}")
  return data
