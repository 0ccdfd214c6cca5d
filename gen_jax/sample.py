"""Sample from a trained workdir (text for language models, a PNG grid for image models) or from a
pretrained LLaMA-family model: a GGUF file or a Hugging Face directory (config.json + safetensors).

  python -m gen_jax.sample --workdir=/tmp/lm --prompt="The for statement" --temperature=0.8
  python -m gen_jax.sample --workdir=/tmp/vae --num_samples=64
  python -m gen_jax.sample --workdir=/tmp/diffusion --class=3 --guidance=2.0
  python -m gen_jax.sample --gguf=SmolLM2-135M-Instruct.Q4_1.gguf --prompt="The capital of France"
  python -m gen_jax.sample --hf_dir=DIR --chat --system="Answer briefly." --prompt="Why is it blue?"
  python -m gen_jax.sample --gguf=FILE --weight_bits=4 --quant_method=awq --calibration_file=TEXT \
      --prompt="The capital of France"          # int4 weights, AWQ-calibrated on TEXT
"""
import sys

from absl import app, flags, logging

from gen_jax.sampling.request import SampleRequest

_WORKDIR = flags.DEFINE_string("workdir", None, "A training workdir (config.json + checkpoints).")
_GGUF = flags.DEFINE_string("gguf", None, "A pretrained LLaMA-architecture GGUF file (instead of "
                            "--workdir).")
_HF_DIR = flags.DEFINE_string("hf_dir", None, "A Hugging Face LLaMA/Mistral/Mixtral directory: "
                              "config.json, *.safetensors, tokenizer.json (instead of --workdir).")
_CHAT = flags.DEFINE_bool("chat", False, "Answer --prompt as the user turn of the model's chat "
                          "template; stops at the template's end-of-turn token.")
_SYSTEM = flags.DEFINE_string("system", "", "With --chat: the system instruction.")
_PROMPT = flags.DEFINE_string("prompt", "", "Text to continue (language models).")
_MAX_NEW_TOKENS = flags.DEFINE_integer("max_new_tokens", 100, "Tokens to generate at most.")
_TEMPERATURE = flags.DEFINE_float("temperature", 0.0, "0 is greedy; > 0 samples.")
_TOP_K = flags.DEFINE_integer("top_k", 0, "Sample among the k most likely tokens (0: all).")
_TOP_P = flags.DEFINE_float("top_p", 1.0, "Nucleus: the most likely tokens holding this "
                            "probability mass (1: all).")
_MIN_P = flags.DEFINE_float("min_p", 0.0, "Drop tokens below min_p x the top probability (0: off).")
_STOP = flags.DEFINE_multi_string("stop", [], "Stop a continuation at this text (repeatable); "
                                  "the text returned ends before it.")
_REPETITION_PENALTY = flags.DEFINE_float("repetition_penalty", 1.0, "CTRL penalty on tokens "
                                         "already seen (1: off; 1.1-1.3 is typical).")
_BEAM_WIDTH = flags.DEFINE_integer("beam_width", 0, "Beam search with this many beams instead of "
                                   "sampling (0: sample).")
_LENGTH_PENALTY = flags.DEFINE_float("length_penalty", 1.0, "Beam search ranks by log p / "
                                     "length ** length_penalty (> 0 favours longer outputs).")
_NUM_RETURN = flags.DEFINE_integer("num_return", 1, "Beam search prints this many best "
                                   "continuations with their scores.")
_DRAFT_LAYERS = flags.DEFINE_integer("draft_layers", 0, "Speculative decoding with the model's own "
                                     "first N layers as the draft (0: off).")
_DRAFT_WORKDIR = flags.DEFINE_string("draft_workdir", "", "Speculative decoding with the model a "
                                     "training workdir holds as the draft (e.g. a student "
                                     "distilled from this model: configs/llm/distill.py); it "
                                     "must share the model's tokenizer.")
_DRAFT_TOKENS = flags.DEFINE_integer("draft_tokens", 4, "Tokens the draft proposes per round.")
_WEIGHT_BITS = flags.DEFINE_integer("weight_bits", 0, "Language models: quantize the attention "
                                    "and MLP weights to 8 or 4 bits before sampling (0: float).")
_WEIGHT_GROUP_SIZE = flags.DEFINE_integer("weight_group_size", 64, "With --weight_bits: inputs "
                                          "sharing one scale.")
_QUANT_METHOD = flags.DEFINE_enum("quant_method", "rtn", ["rtn", "gptq", "awq"], "With "
                                  "--weight_bits: round to nearest, or GPTQ / AWQ calibrated on "
                                  "--calibration_file.")
_WEIGHT_MATMUL_IMPL = flags.DEFINE_enum("weight_matmul_impl", "xla", ["xla", "pallas", "auto"],
                                        "With --weight_bits: XLA's dequantize-then-dot, or the "
                                        "Pallas kernel that dequantizes in registers (a GPU "
                                        "kernel; auto: it on a single GPU).")
_SCAN_LAYERS = flags.DEFINE_bool("scan_layers", True, "Language models: decode with the layers in "
                                  "one loop over their stacked weights; --noscan_layers keeps "
                                  "each layer's weights apart and unrolls the loop, so no step "
                                  "slices the stack (longer compile).")
_CALIBRATION_FILE = flags.DEFINE_string("calibration_file", "", "A text file GPTQ/AWQ calibrate "
                                        "on (16 windows of up to 512 tokens from its start).")
_NUM_SAMPLES = flags.DEFINE_integer("num_samples", 64, "Images in the grid (image models).")
_CLASS = flags.DEFINE_integer("class", None, "Class-conditional image models: the class index of "
                              "every image (default: the grid cycles through the classes).")
_GUIDANCE = flags.DEFINE_float("guidance", None, "Conditioned diffusion models: the "
                               "classifier-free guidance scale (1: the conditional model alone; "
                               "default: the config's sample.guidance_scale).")
_SEED = flags.DEFINE_integer("seed", 0, "Sampling seed.")


def sample(workdir: str, request: SampleRequest):
  from gen_jax import families
  from gen_jax.config import ConfigError
  from gen_jax.train.workdir import load_workdir_params
  config, params = load_workdir_params(workdir)
  family = families.get(config.family)
  for flag, given in (("--chat", request.chat), ("--weight_bits", request.weight_bits),
                      ("--noscan_layers", not request.scan_layers)):
    if given and not hasattr(family, "inference_params"):
      raise ConfigError(flag, f"{workdir!r} holds a {config.family} model, not a language model")
  if hasattr(family, "generate"):  # An image generator: its images become WORKDIR/samples.png.
    from gen_jax.families import images
    if request.prompt and not ("text" in config and config.text.encoder):
      raise ConfigError("--prompt", f"{workdir!r} holds a {config.family} model that is not "
                        "text-conditioned")
    samples, what = family.generate(config, params, workdir, request)
    return images.write_samples(workdir, samples, what=what)
  return family.sample(config, params, workdir, request)


def sample_pretrained(request: SampleRequest, *, gguf: str | None = None,
                      hf_dir: str | None = None) -> str:
  """Loads a GGUF file or a Hugging Face directory (one of them) and samples as the llm family."""
  from gen_jax import interop
  from gen_jax.config import ConfigError
  from gen_jax.families import llm_text
  flag, path = ("--gguf", gguf) if gguf else ("--hf_dir", hf_dir)
  try:
    pretrained = interop.load_gguf(gguf) if gguf else interop.load_hf(hf_dir)
  except (OSError, ValueError) as e:
    raise ConfigError(flag, str(e)) from e
  if pretrained.tokenizer is None:
    raise ConfigError(flag, f"{path!r} has no tokenizer.json")
  return llm_text.generate_text(pretrained.config, pretrained.params, pretrained.tokenizer, request)


def _check_flags() -> None:
  """Flag combinations, checked before anything loads."""
  from gen_jax.config import ConfigError
  given = [f"--{flag.name}" for flag in (_WORKDIR, _GGUF, _HF_DIR) if flag.value]
  if len(given) != 1:
    raise ConfigError(", ".join(given) if given else "--workdir/--gguf/--hf_dir",
                      f"{'none' if not given else len(given)} given; give exactly one of --workdir "
                      "(a training workdir), --gguf (a GGUF file) or --hf_dir (a Hugging Face "
                      "directory)")
  if _SYSTEM.value and not _CHAT.value:
    raise ConfigError("--system", "a system instruction needs --chat")


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  if not flags.FLAGS["verbosity"].present:  # Orbax logs every save at INFO; keep the console readable.
    logging.set_verbosity(logging.WARNING)
  from gen_jax.config import ConfigError
  request = SampleRequest(_PROMPT.value, _MAX_NEW_TOKENS.value, _TEMPERATURE.value,
                          _NUM_SAMPLES.value, _SEED.value, _TOP_K.value, _TOP_P.value, _MIN_P.value,
                          _REPETITION_PENALTY.value, tuple(_STOP.value), _BEAM_WIDTH.value,
                          _LENGTH_PENALTY.value, _NUM_RETURN.value, _CHAT.value, _SYSTEM.value,
                          _DRAFT_LAYERS.value, _DRAFT_TOKENS.value, _DRAFT_WORKDIR.value,
                          _WEIGHT_BITS.value, _WEIGHT_GROUP_SIZE.value, _QUANT_METHOD.value,
                          _CALIBRATION_FILE.value, _CLASS.value, _GUIDANCE.value,
                          weight_matmul_impl=_WEIGHT_MATMUL_IMPL.value,
                          scan_layers=_SCAN_LAYERS.value)
  try:
    _check_flags()
    if _WORKDIR.value:
      sample(_WORKDIR.value, request)
    else:
      sample_pretrained(request, gguf=_GGUF.value, hf_dir=_HF_DIR.value)
  except (ConfigError, ValueError) as e:
    print(f"Error: {e}", file=sys.stderr)
    sys.exit(2)


if __name__ == "__main__":
  app.run(main)
