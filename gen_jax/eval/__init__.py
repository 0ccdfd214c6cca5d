"""Evaluation outputs and metrics: sample grids, Frechet distances, the FID network."""
from gen_jax.eval.frechet import frechet_distance, frechet_distance_of_features, gaussian_statistics
from gen_jax.eval.image_grid import save_image_grid
from gen_jax.eval.inception import fid, inception_features, load_inception_params

__all__ = [
    "fid",
    "frechet_distance",
    "frechet_distance_of_features",
    "gaussian_statistics",
    "inception_features",
    "load_inception_params",
    "save_image_grid",
]
