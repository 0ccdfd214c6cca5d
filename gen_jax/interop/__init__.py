"""Import and export of pretrained LLaMA-family checkpoints: GGUF files and Hugging Face directories
(config.json + safetensors), with their tokenizers and chat templates."""
from gen_jax.interop.chat_template import (chat_prompt, conversation, encode_chat,
                                           end_of_turn_token, render)
from gen_jax.interop.gguf_io import load_gguf
from gen_jax.interop.hf_io import export_hf, load_hf
from gen_jax.interop.hf_layout import (SUPPORTED_MODEL_TYPES, Pretrained, config_from_hf, hf_config,
                                       params_from_hf, params_to_hf)

__all__ = [
    "Pretrained",
    "SUPPORTED_MODEL_TYPES",
    "chat_prompt",
    "config_from_hf",
    "conversation",
    "encode_chat",
    "end_of_turn_token",
    "export_hf",
    "hf_config",
    "load_gguf",
    "load_hf",
    "params_from_hf",
    "params_to_hf",
    "render",
]
