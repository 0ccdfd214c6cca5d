"""A text-conditioned diffusion model on sklearn's 8x8 digits: a U-Net whose cross-attention reads
a frozen SmolLM2-135M's token states of each image's caption ("a picture of the digit 3"), with
classifier-free guidance against the empty (all-masked) caption.

  python -m gen_jax.main --config=configs/diffusion/text_digits.py:small --workdir=/tmp/text_diffusion
  python -m gen_jax.sample --workdir=/tmp/text_diffusion --prompt="a picture of the digit 3" \
      --guidance=2 --num_samples=16

Any language model gen_jax loads can be the encoder (text.encoder: "workdir:DIR" of an llm run,
"gguf:PATH", "hf:DIR"; model.context_dim = its width). Presets: tiny (tests override the encoder
with a tiny LM; seconds), small (3000 steps, as configs/diffusion/digits.py:small).
"""
from gen_jax.config import apply_preset
from gen_jax.config import diffusion, llm

_TEXT = {"text.encoder": llm.smollm2_source(), "model.context_dim": 576,  # SmolLM2's width.
         "model.num_classes": 0, "sample.guidance_scale": 2.0}

PRESETS = {
    "tiny": {**diffusion.TINY, **_TEXT},
    "small": {
        **_TEXT, "optimizer.learning_rate": 1e-3,
        "train.num_steps": 3000, "train.batch_size": 64, "train.log_every": 50,
        "train.eval_every": 1000, "train.eval_max_batches": -1, "optimizer.warmup_steps": 100,
        "checkpoint.every_steps": 1000,
    },
}


def get_config(arg=None):
  return apply_preset(diffusion.base(), arg, PRESETS, default="small")
