"""PNG grids of image samples."""
import math
import os

import numpy as np
from PIL import Image


def save_image_grid(images: np.ndarray, path: str, *, num_cols: int | None = None,
                    scale: int = 1) -> str:
  """Writes images [n, H, W, C] with values in [-1, 1] as one PNG grid; returns the path.

  C is 1 (grey) or 3 (RGB); `scale` enlarges each pixel (nearest neighbour) for tiny images.
  """
  images = np.asarray(images, np.float32)
  n, h, w, c = images.shape
  if c not in (1, 3):
    raise ValueError(f"images need 1 or 3 channels, got {c}")
  num_cols = num_cols or math.ceil(math.sqrt(n))
  num_rows = math.ceil(n / num_cols)
  pad = 1
  grid = np.ones((num_rows * (h + pad) + pad, num_cols * (w + pad) + pad, c), np.float32)
  pixels = (np.clip(images, -1, 1) + 1) / 2
  for i in range(n):
    r, col = divmod(i, num_cols)
    grid[pad + r * (h + pad):pad + r * (h + pad) + h, pad + col * (w + pad):pad + col * (w + pad) + w] = pixels[i]
  grid = (grid * 255).round().astype(np.uint8)
  grid = np.repeat(np.repeat(grid, scale, axis=0), scale, axis=1)
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  Image.fromarray(grid[..., 0] if c == 1 else grid).save(path)
  return path
