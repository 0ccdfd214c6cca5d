"""Export a trained language model to a Hugging Face directory (config.json, model.safetensors,
tokenizer files) that transformers' AutoModelForCausalLM / AutoTokenizer load.

  python -m gen_jax.export --workdir=/tmp/lora --hf_dir=/tmp/lora_hf

A LoRA run exports with its adapters folded into the base weights; a distillation run exports its
student.
"""
import sys

from absl import app, flags, logging

_WORKDIR = flags.DEFINE_string("workdir", None, "A training workdir of the llm family.")
_HF_DIR = flags.DEFINE_string("hf_dir", None, "The directory to write.")
flags.mark_flags_as_required(["workdir", "hf_dir"])


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  if not flags.FLAGS["verbosity"].present:
    logging.set_verbosity(logging.WARNING)
  from gen_jax.config import ConfigError
  try:
    from gen_jax.families import llm
    llm.export_workdir(_WORKDIR.value, _HF_DIR.value)
  except (ConfigError, ValueError) as e:
    print(f"Error: {e}", file=sys.stderr)
    sys.exit(2)


if __name__ == "__main__":
  app.run(main)
