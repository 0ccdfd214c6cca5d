"""Pretrain a LLaMA-style language model on text (default: Python's documentation topics).

  python -m gen_jax.main --config=configs/llm/pretrain.py:small --workdir=/tmp/lm
  python -m gen_jax.sample --workdir=/tmp/lm --prompt="The for statement"

Presets: tiny (tests, seconds); small (the README quick start: 250 steps, 2 min 52 s to train and
sample on a 2-core CPU on 2026-12-04; held-out 4.38 nats/token, 1.49 bits/byte, at step 250); 125m,
1b and 7b (accelerator shapes; they build and validate on a CPU but are not trained there). Check a
preset's memory per device for a target mesh before launching it, on any machine:

  python -m gen_jax.main --config=configs/llm/pretrain.py:7b --dry_run --dry_run_devices=256
"""
from gen_jax.config import apply_preset
from gen_jax.config import llm

PRESETS = {
    "tiny": {
        **llm.TINY_MODEL,
        "train.num_steps": 20, "train.batch_size": 8, "train.log_every": 5, "train.eval_every": 10,
        "train.eval_max_batches": 4, "optimizer.warmup_steps": 5, "optimizer.learning_rate": 3e-3,
        "checkpoint.every_steps": 10,
    },
    "small": {
        "train.num_steps": 250, "train.batch_size": 16, "train.log_every": 10,
        "train.eval_every": 100, "train.eval_max_batches": 20, "optimizer.warmup_steps": 30,
        "optimizer.learning_rate": 2e-3, "checkpoint.every_steps": 100,
    },
    "125m": {
        "model.vocab_size": 32000, "model.embed_dim": 768, "model.num_layers": 12,
        "model.num_heads": 12, "model.num_kv_heads": 4, "model.head_dim": 64, "model.mlp_dim": 2048,
        "model.max_seq_len": 1024, "model.dtype": "bfloat16",
        "train.num_steps": 20000, "train.batch_size": 256, "train.eval_every": 1000,
        "optimizer.warmup_steps": 1000, "optimizer.learning_rate": 6e-4,
        "checkpoint.every_steps": 1000,
    },
    "1b": {  # TinyLlama-1.1B's shape.
        "model.vocab_size": 32000, "model.embed_dim": 2048, "model.num_layers": 22,
        "model.num_heads": 32, "model.num_kv_heads": 4, "model.head_dim": 64, "model.mlp_dim": 5632,
        "model.max_seq_len": 2048, "model.dtype": "bfloat16", "model.remat": "full",
        # The flash kernels on GPU/TPU (cuDNN where it serves), XLA on a CPU: on an H200 the 1b
        # step ran 2.9x faster than with the XLA reference (docs/BENCHMARKS.md).
        "model.attention_impl": "auto",
        "train.num_steps": 100000, "train.batch_size": 256, "train.eval_every": 2000,
        "optimizer.warmup_steps": 2000, "optimizer.learning_rate": 4e-4,
        "checkpoint.every_steps": 2000, "mesh.data": 1, "mesh.fsdp": -1,
    },
    "7b": {  # Llama-2-7B's shape (MaxText's reference point for MFU).
        "model.vocab_size": 32000, "model.embed_dim": 4096, "model.num_layers": 32,
        "model.num_heads": 32, "model.num_kv_heads": 32, "model.head_dim": 128,
        "model.mlp_dim": 11008, "model.max_seq_len": 4096, "model.dtype": "bfloat16",
        "model.remat": "full", "model.norm_eps": 1e-5, "model.attention_impl": "auto",
        "train.num_steps": 100000, "train.batch_size": 256, "train.eval_every": 2000,
        "optimizer.warmup_steps": 2000, "optimizer.learning_rate": 3e-4,
        "checkpoint.every_steps": 2000, "mesh.data": 1, "mesh.fsdp": -1,
    },
}


def get_config(arg=None):
  return apply_preset(llm.base(), arg, PRESETS, default="small")
