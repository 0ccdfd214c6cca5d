"""Evaluation outputs and metrics."""
from gen_jax.eval.image_grid import save_image_grid

__all__ = ["save_image_grid"]
