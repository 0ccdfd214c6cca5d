"""gen_jax: generative models in JAX/Flax, from pretraining to alignment and image families."""
import setuptools

# Versions measured together on 2026-11-23 (../shared/DATA.md). Lower bounds are the versions the
# code uses APIs of (jax.shard_map, jax.set_mesh, AxisType); upper bounds keep a minor-version bump
# of the fast-moving ones from breaking a fresh install.
INSTALL_REQUIRES = [
    "jax>=0.10.2,<0.11",
    "flax>=0.12.8,<0.13",
    "optax>=0.2.8,<0.3",
    "orbax-checkpoint>=0.12.8,<0.13",
    "grain>=0.2.18,<0.3",
    "chex>=0.1.92",
    "ml-collections>=1.1.0",
    "tensorflow-datasets>=4.9.10",
    "tokenizers>=0.23,<0.24",
    "absl-py>=2.1",
    "numpy>=2.0",
    "tqdm>=4.66",
    "tensorboardX>=2.6",
    "pillow>=10.0",
    "scikit-learn>=1.5",
    "scipy>=1.11",  # The flow's LU init, the Frechet distance's matrix square root.
    "importlib_resources>=6.0",  # tensorflow-datasets needs it to prepare local builders.
    "array_record>=0.5",  # The file format of locally prepared tfds datasets.
    # gen_jax.interop: GGUF files, Hugging Face safetensors checkpoints, chat templates.
    "gguf>=0.19.0",
    "safetensors>=0.8.0",
    "jinja2>=3.1.6",  # transformers' floor for sandboxed chat templates (older ones had escapes).
    # Real dialogue for supervised fine-tuning (gen_jax.data.conversations): YAML files only, no
    # dependencies of its own (1.3.3 declares none).
    "chatterbot-corpus>=1.3.3",
    "pyyaml>=6.0",
    # gen_jax.rag's approximate nearest-neighbour search (HNSW); a CPU wheel, no native build.
    "faiss-cpu>=1.9,<2",
    # gen_jax.rag.evaluate's lexical baseline (BM25); pure Python over numpy.
    "bm25s>=0.3.16,<0.4",
    # gen_jax.eval.text_metrics: BLEU and chrF as published numbers compute them, and ROUGE.
    "sacrebleu>=2.4,<3",
    "rouge-score>=0.1.2",
]

EXTRAS = {
    # The test suite: pytest, plus what the notebook test needs to execute the Colab notebook.
    # pytest-xdist: the suite runs on two worker processes (-n 2), which overlap XLA's
    # single-threaded compiles; most of a test's time on a CPU is compiling.
    "dev": ["pytest>=8.0", "pytest-xdist>=3.6", "nbclient>=0.10", "nbformat>=5.10",
            "ipykernel>=6.29", "lm-eval>=0.4.13,<0.5"],
    # gen_jax as a model of EleutherAI's lm-evaluation-harness (gen_jax.eval.lm_eval_backend).
    "eval": ["lm-eval>=0.4.13,<0.5"],
    # Accelerators, following JAX's own install names (pip install "jax[tpu]" / "jax[cuda12]").
    "tpu": ["jax[tpu]>=0.10.2,<0.11"],
    "gpu": ["jax[cuda12]>=0.10.2,<0.11"],
}

setuptools.setup(
    name="gen_jax",
    version="0.1.0",
    description=__doc__,
    python_requires=">=3.11",
    packages=setuptools.find_packages(include=["gen_jax", "gen_jax.*"]),
    install_requires=INSTALL_REQUIRES,
    extras_require=EXTRAS,
)
