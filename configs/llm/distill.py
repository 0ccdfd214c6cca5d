"""Distil SmolLM2-135M-Instruct into a small gen_jax LM (Hinton et al., 2015): the student learns
the teacher's next-token distribution on real text (KL to its logits), with its tokenizer.

  python -m gen_jax.main --config=configs/llm/distill.py:smollm2 --workdir=/tmp/distill
  python -m gen_jax.sample --workdir=/tmp/distill --prompt="The for statement"

The teacher is frozen (no gradient, no optimizer state, not in checkpoints: it is reloaded from
distill.teacher at every start). Any earlier stage can teach: --config.distill.teacher=workdir:DIR.
eval/teacher_bits_per_byte, beside the student's eval/bits_per_byte, is the teacher on the same
held-out text. A distilled student can draft for its teacher (gen_jax.sampling.speculative).

Presets: smollm2 (a 4-layer, 256-wide student on Python's documentation topics); tiny (tests: a
2-layer, 32-wide student of the same teacher).
"""
from gen_jax.config import apply_preset
from gen_jax.config import llm

STUDENT = {  # SmolLM2's vocabulary and tokenizer, a much smaller body.
    "model.vocab_size": 49152, "model.tie_embeddings": True, "model.rope_base": 100000.0,
    "distill.teacher": llm.smollm2_source(), "distill.temperature": 1.0, "distill.kl_weight": 1.0,
}

PRESETS = {
    "tiny": {
        **STUDENT,
        "model.embed_dim": 32, "model.num_layers": 2, "model.num_heads": 2, "model.num_kv_heads": 1,
        "model.head_dim": 16, "model.mlp_dim": 64, "model.max_seq_len": 32,
        "train.num_steps": 4, "train.batch_size": 2, "train.log_every": 2, "train.eval_every": 4,
        "train.eval_max_batches": 2, "optimizer.warmup_steps": 1, "optimizer.learning_rate": 3e-3,
        "checkpoint.every_steps": 4,
    },
    "smollm2": {
        **STUDENT,
        "model.embed_dim": 256, "model.num_layers": 4, "model.num_heads": 4,
        "model.num_kv_heads": 2, "model.head_dim": 64, "model.mlp_dim": 704,
        "model.max_seq_len": 128,
        "train.num_steps": 150, "train.batch_size": 8, "train.log_every": 10,
        "train.eval_every": 50, "train.eval_max_batches": 10, "optimizer.warmup_steps": 15,
        "optimizer.learning_rate": 2e-3, "checkpoint.every_steps": 50,
    },
}


def get_config(arg=None):
  return apply_preset(llm.base(), arg, PRESETS, default="smollm2")
