"""A pretrained model's tokenizer as a gen_jax `Tokenizer`: from GGUF metadata or HF files.

GGUF keeps a byte-level BPE as metadata under llama.cpp's names (tokenizer.ggml.tokens / merges /
token_type / bos, eos and padding ids, tokenizer.ggml.pre naming the pre-tokenizer) plus
tokenizer.chat_template; we rebuild the `tokenizers.Tokenizer` the model was trained with from them,
as transformers' GGUF loader does (integrations/gguf). A Hugging Face directory has tokenizer.json
itself, with the special tokens and chat template in tokenizer_config.json (or chat_template.jinja).
"""
import json
import os

import tokenizers
from tokenizers import AddedToken, decoders, models, pre_tokenizers, processors

from gen_jax.data.tokenizer import TOKENIZER_CONFIG_FILE, TOKENIZER_FILE, Tokenizer

CHAT_TEMPLATE_FILE = "chat_template.jinja"  # Where transformers 5 saves the template.
_CONTROL, _USER_DEFINED = 3, 4  # llama.cpp's token types of special and added tokens.


def _byte_level():
  return pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)


# tokenizer.ggml.pre -> the pre-tokenizer of the model's own tokenizer.json. SmolLM's splits every
# digit apart before the GPT-2 split (llama.cpp's LLAMA_VOCAB_PRE_TYPE_SMOLLM).
_PRE_TOKENIZERS = {
    "default": _byte_level,
    "gpt2": _byte_level,
    "smollm": lambda: pre_tokenizers.Sequence([pre_tokenizers.Digits(individual_digits=True),
                                               _byte_level()]),
}


def from_gguf_metadata(metadata: dict, source: str = "GGUF") -> Tokenizer:
  """The tokenizer a GGUF file describes.

  Args:
    metadata: {key: value} of the file's fields (`GGUFReader` field contents).
    source: named in errors (the file's path).
  Supports byte-level BPE (tokenizer.ggml.model 'gpt2') with the pre-tokenizers in
  `_PRE_TOKENIZERS`; anything else is refused naming the field.
  """
  kind = metadata.get("tokenizer.ggml.model")
  if kind != "gpt2":
    raise ValueError(f"{source}: tokenizer.ggml.model: {kind!r} is not supported (only 'gpt2', "
                     "byte-level BPE)")
  pre = metadata.get("tokenizer.ggml.pre", "default")
  if pre not in _PRE_TOKENIZERS:
    raise ValueError(f"{source}: tokenizer.ggml.pre: {pre!r} is not supported; supported: "
                     f"{sorted(_PRE_TOKENIZERS)}")
  tokens = list(metadata["tokenizer.ggml.tokens"])
  merges = [tuple(merge.split(" ")) for merge in metadata["tokenizer.ggml.merges"]]
  hf = tokenizers.Tokenizer(models.BPE({token: i for i, token in enumerate(tokens)}, merges,
                                       fuse_unk=False, byte_fallback=False))
  hf.pre_tokenizer = _PRE_TOKENIZERS[pre]()
  hf.decoder = decoders.ByteLevel()
  # Without these, "<|im_start|>" in a rendered chat would be cut into byte-level pieces.
  types = list(metadata.get("tokenizer.ggml.token_type", [1] * len(tokens)))
  hf.add_special_tokens([AddedToken(t, special=True, normalized=False)
                         for t, kind in zip(tokens, types) if kind == _CONTROL])
  hf.add_tokens([AddedToken(t, special=False, normalized=False)
                 for t, kind in zip(tokens, types) if kind == _USER_DEFINED])
  token = lambda key: None if key not in metadata else tokens[int(metadata[key])]  # noqa: E731
  eos, bos = token("tokenizer.ggml.eos_token_id"), token("tokenizer.ggml.bos_token_id")
  if eos is None:
    raise ValueError(f"{source}: tokenizer.ggml.eos_token_id: missing")
  if metadata.get("tokenizer.ggml.add_bos_token") and bos is not None:
    hf.post_processor = processors.TemplateProcessing(
        single=f"{bos} $A", special_tokens=[(bos, tokens.index(bos))])
  return Tokenizer(hf, eos_token=eos, pad_token=token("tokenizer.ggml.padding_token_id") or eos,
                   bos_token=bos, chat_template=metadata.get("tokenizer.chat_template"))


def _token_name(value) -> str | None:
  """tokenizer_config.json writes a special token as its text or as a serialized AddedToken."""
  return value.get("content") if isinstance(value, dict) else value


def from_hf_files(directory: str, hf_config: dict) -> Tokenizer | None:
  """The tokenizer of a Hugging Face model directory, or None where it has no tokenizer.json.

  The special tokens come from tokenizer_config.json, else from config.json's token ids (the
  padding token defaults to eos).
  """
  path = os.path.join(directory, TOKENIZER_FILE)
  if not os.path.exists(path):
    return None
  hf = tokenizers.Tokenizer.from_file(path)
  settings = {}
  config_path = os.path.join(directory, TOKENIZER_CONFIG_FILE)
  if os.path.exists(config_path):
    with open(config_path) as f:
      settings = json.load(f)

  def special(name: str) -> str | None:
    if settings.get(name) is not None:
      return _token_name(settings[name])
    token_id = hf_config.get(f"{name}_id")
    if isinstance(token_id, list):  # Several eos ids (e.g. Llama 3 instruct): the first.
      token_id = token_id[0]
    return None if token_id is None else hf.id_to_token(token_id)

  eos = special("eos_token")
  if eos is None:
    raise ValueError(f"{directory}: eos_token: neither {TOKENIZER_CONFIG_FILE} nor config.json "
                     "names the end-of-text token")
  template = settings.get("chat_template")
  template_path = os.path.join(directory, CHAT_TEMPLATE_FILE)
  if template is None and os.path.exists(template_path):
    with open(template_path) as f:
      template = f.read()
  if isinstance(template, list):  # Several named templates: the default one.
    template = {t["name"]: t["template"] for t in template}.get("default")
  return Tokenizer(hf, eos_token=eos, pad_token=special("pad_token") or eos,
                   bos_token=special("bos_token"), chat_template=template)
