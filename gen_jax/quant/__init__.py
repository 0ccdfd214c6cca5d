"""Post-training weight-only quantization: group-wise int8 / int4 weights dequantized inside the
matmul, by round-to-nearest, GPTQ (Frantar et al., 2023) or AWQ (Lin et al., 2024).

  qparams = quantize_params(params, config, bits=4, group_size=64, method="gptq",
                            calibration=tokens)
  model = Transformer(quantized_config(config, 4, 64))  # Decodes with gen_jax.sampling unchanged.
"""
from gen_jax.quant.formats import (WEIGHT_BITS, check_weight_quantization, dequantize, pack_int4,
                                   quantize, unpack_int4)
from gen_jax.quant.projection import STATS, Projection
from gen_jax.quant.gptq import gptq_quantize
from gen_jax.quant.calibration import collect_input_grams
from gen_jax.quant.convert import METHODS, dequantize_params, quantize_params, quantized_config

__all__ = [
    "METHODS",
    "Projection",
    "STATS",
    "WEIGHT_BITS",
    "check_weight_quantization",
    "collect_input_grams",
    "dequantize",
    "dequantize_params",
    "gptq_quantize",
    "pack_int4",
    "quantize",
    "quantize_params",
    "quantized_config",
    "unpack_int4",
]
