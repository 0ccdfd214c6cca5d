"""What a user asks a trained model to sample: the flags of `python -m gen_jax.sample` as one value,
read by each family's sample/generate function (and by gen_jax.rag's answers)."""
import dataclasses


@dataclasses.dataclass(frozen=True)
class SampleRequest:
  prompt: str = ""
  max_new_tokens: int = 100
  temperature: float = 0.0
  num_samples: int = 64
  seed: int = 0
  top_k: int = 0
  top_p: float = 1.0
  min_p: float = 0.0
  repetition_penalty: float = 1.0
  stop: tuple[str, ...] = ()
  beam_width: int = 0  # > 0: beam search instead of sampling.
  length_penalty: float = 1.0
  num_return: int = 1
  chat: bool = False  # Prompt as the user turn of the chat template.
  system: str = ""  # The chat's system instruction.
  draft_layers: int = 0  # > 0: speculative decoding, drafting with the model's first N layers.
  draft_tokens: int = 4
  draft_workdir: str = ""  # Speculative decoding with this training workdir's model as the draft.
  # Weight-only quantization of a language model before sampling (gen_jax.quant): 0 keeps its
  # float weights; 8 or 4 with a scale per weight_group_size inputs, by quant_method ("rtn",
  # "gptq", "awq"; the calibrated two read calibration_file, a text file).
  weight_bits: int = 0
  weight_group_size: int = 64
  quant_method: str = "rtn"
  calibration_file: str = ""
  class_label: int | None = None  # Class-conditional image models: every image of this class.
  guidance: float | None = None  # Classifier-free guidance scale; None: the config's.
  weight_matmul_impl: str = "xla"  # With weight_bits: how int weights multiply (gen_jax.quant.matmul).
  # Language models: False decodes with each layer's weights apart (model.scan_layers=False), so
  # no step slices the layer stack; longer compile.
  scan_layers: bool = True
