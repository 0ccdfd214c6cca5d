"""Fashion-MNIST (Xiao, Rasul & Vollgraf, 2017) through a tensorflow-datasets builder of our own.

Nothing downloads at run time here, so the builder reads the four IDX files
(train-images-idx3-ubyte.gz, train-labels-idx1-ubyte.gz, t10k-images-idx3-ubyte.gz,
t10k-labels-idx1-ubyte.gz) from a manual dir, prepares them once as array_record (the format tfds
reads without TensorFlow), and `tfds.data_source` gives Grain-compatible random access to them.
The train split has 60,000 images and the test split (our held-out data) 10,000, each
[28, 28, 1] uint8 with a label in 0..9 (CLASS_NAMES).
"""
import gzip
import os
import pathlib

import numpy as np
import tensorflow_datasets as tfds

from gen_jax.config.errors import ConfigError

BUILDER_NAME = "fashion_mnist_local"
IMAGE_SHAPE = (28, 28, 1)
CLASS_NAMES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt",
               "Sneaker", "Bag", "Ankle boot")
# Split -> (images file, labels file), as the dataset's authors name them.
FILES = {
    "train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
    "test": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"),
}
# Where the raw files are looked for when config.data.manual_dir is "": shared/ beside the repo,
# then Debian's dataset-fashion-mnist package.
_REPO_ROOT = pathlib.Path(__file__).resolve().parents[2]
DEFAULT_MANUAL_DIRS = (str(_REPO_ROOT.parent / "shared" / "data" / "fashion-mnist"),
                       "/usr/share/datasets/fashion-mnist")
_IDX_UBYTE = 0x08  # The IDX type code of unsigned bytes.


def read_idx(path) -> np.ndarray:
  """An IDX file (gzipped) of unsigned bytes -> uint8 array of the shape its header gives.

  The header is two zero bytes, the type code, the number of dimensions, then each dimension as a
  big-endian uint32 (LeCun et al.'s MNIST format).
  """
  with gzip.open(path, "rb") as f:
    data = f.read()
  if len(data) < 4 or data[:2] != b"\0\0" or data[2] != _IDX_UBYTE:
    raise ValueError(f"{path}: not an IDX file of unsigned bytes")
  ndim = data[3]
  shape = tuple(int.from_bytes(data[4 + 4 * i:8 + 4 * i], "big") for i in range(ndim))
  offset = 4 + 4 * ndim
  if len(data) - offset != int(np.prod(shape)):
    raise ValueError(f"{path}: header says {shape} ({int(np.prod(shape))} bytes), the file holds "
                     f"{len(data) - offset}")
  return np.frombuffer(data, np.uint8, offset=offset).reshape(shape)


class FashionMnistLocal(tfds.core.GeneratorBasedBuilder):
  """Fashion-MNIST from local IDX files; registered with tfds as "fashion_mnist_local"."""

  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "The IDX files of zalandoresearch/fashion-mnist, read locally."}
  MANUAL_DOWNLOAD_INSTRUCTIONS = (
      "Put " + ", ".join(f for pair in FILES.values() for f in pair) + " in the manual dir "
      "(config.data.manual_dir).")

  def _info(self) -> tfds.core.DatasetInfo:
    return tfds.core.DatasetInfo(
        builder=self,
        description="Zalando's article images: 28x28 grey, 10 classes.",
        # Raw uint8 tensors rather than tfds.features.Image: encoding PNGs would need TensorFlow.
        features=tfds.features.FeaturesDict({
            "image": tfds.features.Tensor(shape=IMAGE_SHAPE, dtype=np.uint8),
            "label": tfds.features.ClassLabel(names=list(CLASS_NAMES)),
        }),
        supervised_keys=("image", "label"),
        # Records keep the IDX files' order, so example i of a split is row i of its file.
        disable_shuffling=True,
        homepage="https://github.com/zalandoresearch/fashion-mnist",
    )

  def _split_generators(self, dl_manager):
    root = dl_manager.manual_dir
    return {split: self._generate_examples(root / images, root / labels)
            for split, (images, labels) in FILES.items()}

  def _generate_examples(self, images_path, labels_path):
    images, labels = read_idx(images_path), read_idx(labels_path)
    if images.ndim != 3 or images.shape[1:] != IMAGE_SHAPE[:2] or labels.shape != images.shape[:1]:
      raise ValueError(f"{images_path} {images.shape} and {labels_path} {labels.shape} are not "
                       f"n images of {IMAGE_SHAPE[:2]} with n labels")
    for i, (image, label) in enumerate(zip(images, labels)):
      yield i, {"image": image[..., None], "label": int(label)}


def find_manual_dir(manual_dir: str) -> str:
  """config.data.manual_dir, or the first default place holding all four files; ConfigError."""
  candidates = (manual_dir,) if manual_dir else DEFAULT_MANUAL_DIRS
  needed = [f for pair in FILES.values() for f in pair]
  for candidate in candidates:
    if all(os.path.isfile(os.path.join(candidate, f)) for f in needed):
      return candidate
  raise ConfigError("data.manual_dir", f"no folder holds Fashion-MNIST's {', '.join(needed)}; "
                    f"searched {list(candidates)}. Point data.manual_dir at the folder that does")


def load_fashion_mnist(manual_dir: str = "", tfds_data_dir: str = ""
                       ) -> dict[str, dict[str, np.ndarray]]:
  """{"train", "test"} -> {"images": [n, 28, 28, 1] uint8, "labels": [n] int32}.

  Prepares the dataset in `tfds_data_dir` ("" is tfds's default, ~/tensorflow_datasets) the first
  time, from the IDX files in `manual_dir` ("" searches DEFAULT_MANUAL_DIRS); later calls only
  read what was prepared.
  """
  data_dir = tfds_data_dir or None
  builder = FashionMnistLocal(data_dir=data_dir, file_format="array_record")
  if not builder.is_prepared():
    config = tfds.download.DownloadConfig(manual_dir=find_manual_dir(manual_dir))
    builder.download_and_prepare(download_config=config)
  sources = tfds.data_source(BUILDER_NAME, data_dir=data_dir, download=False)
  arrays = {}
  for split in FILES:
    source = sources[split]
    examples = source.__getitems__(list(range(len(source))))  # One batched read of every record.
    arrays[split] = {"images": np.stack([e["image"] for e in examples]),
                     "labels": np.asarray([e["label"] for e in examples], np.int32)}
  return arrays
