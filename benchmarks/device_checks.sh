#!/usr/bin/env bash
# The GPU numbers issues 4 and 5 ask for, in one call of the lent device machine (an H100/H200).
#
#   bash benchmarks/device_wheels.sh                 # here, once: the wheels that machine lacks
#   run(command="bash benchmarks/device_checks.sh", carry=[".whl"], timeout_s=595)
#
# Stages, most wanted first, each under its own time limit so that a stage that hangs or fails
# leaves the rest their time (the default stages' limits add to 660 s, past the call's 595: the
# last one runs as far as the call lets it; the lease is 15 minutes of device time, the machine's
# start included: on 2026-12-04 the start took about 30 s, so a second, warm call of about 300 s
# fits after this one: see "Then" below). The device tool brings back at most 8 files from $OUT:
# every stage's full output is appended to $OUT/stages.txt as it ends, and the files stages make
# for reading here (HLO dumps, profiler traces) go under $ART, packed into $OUT/artifacts.tar.gz
# after each stage. The reply carries the end of the combined output, which ends with every
# stage's results. Default stages, decode_1b lm_train_cudnn kernel_tests attention_mosaic
# decode_1b_options (issues 5 and 4; the rows print as they finish, so a stage cut by its limit
# still reports its first rows):
#   decode_1b   benchmarks/decode.py at batch 1 for the 1b preset's shape (TinyLlama-1.1B, random
#               weights): bf16, and int8/int4 by XLA (one product per scale group for a
#               decoding row since the sixth session of 2026-12-04: by benchmarks/aot_hlo.py,
#               XLA:GPU's int8 step then moves 1.11x its int8 weights, not 4.43x) and by the
#               Pallas kernel, each with the layer loop over the weight stacks and with no loop
#               (model.scan_layers=False: each layer's weights apart; aot_hlo.py: 1.01x of the
#               bytes a step must read, against 2.48x rolled); each with its fraction of the
#               bandwidth roofline
#   lm_train_cudnn  the 1b run with attention_impl=cudnn, remat=dots and dots_attention (cuDNN's
#               forward kept, not rerun): packed training batches through cuDNN's packed layout
#               (landed in the seventh session of 2026-12-04, compiled for an H200 by aot_hlo.py,
#               never run): cuDNN ran 1.25-1.8x the Pallas kernel, and attention is about a fifth
#               of the step at 47.5% MFU
#   kernel_tests  tests/kernels' GPU cases compiled with Triton instead of interpreted
#               (GEN_JAX_COMPILED_KERNELS=1): every awkward shape, mask and offset of the CPU suite
#               (the flash tests: 20 in 34 s on the H200; since the seventh session of 2026-12-04
#               also the forward split over the keys and the kernel reading one layer of a stacked
#               cache), and the quantized matmul's; and cuDNN's
#               packed layout of documents (tests/ops/test_cudnn_packed.py: output and gradients
#               against the XLA reference, GQA, a sliding window, padding, an all-padding row, and
#               the Pallas fallback for rows of more documents than it is compiled for)
#   attention_mosaic  the Mosaic GPU kernels (attention_impl=pallas_mosaic: forward, dK/dV, dQ; wgmma, TMA,
#               warp-specialized; landed on 2026-12-05, interpreted on a CPU and compiled to SASS
#               without a GPU (aot_hlo.py --program=attention), never run on one; kernel_tests runs
#               its tests compiled first) against the Triton kernel and cuDNN, and with dQ from
#               the dK/dV kernel (pallas_mosaic:dq=atomic: 5 products a tile, not 7; TMA's
#               reducing copies), forward + backward at 2k and 8k (Llama shapes: 32 heads, 8 kv
#               heads of 128), then each forward alone at 8k beside JAX's own Mosaic example;
#               then at the 1b preset's shape (head_dim 64, 4 kv heads, 2k). Target: 0.9x cuDNN
#   decode_1b_options  the 1.1B rows at batch 1 and 32 in bf16 (rolled and separate layers)
#               compiled with XLA's defaults (--xla_options=none), then with
#               gen_jax.sampling.jit.COMPILER_OPTIONS (the default since the seventh session of
#               2026-12-04: cuBLAS products, dynamic-slice fusion, no dot merger; aot_hlo.py:
#               the rolled loop's step then moves 1.01x of its weights, not 2.48x): whether the
#               rolled loop now decodes as fast as separate layers, and cuBLAS as fast as Triton
# Then, as far as the lease allows,
# STAGES="decode_trace lm_train_mosaic decode_7b decode_7b_long attention_decode decode_1b_int32 lm_train_flags lm_train_trace decode_1b_graphs decode_hlo lm_train_remat attention attention_1b decode moe decode_moe":
#   decode_trace  the 1.1B decoder at batch 1 in bf16, rolled layer loop and separate layers
#               (scan_layers=False; and checking for stopped rows every 8 tokens instead of
#               every one: one host wait per 8 steps), each profiled for one call of 32 tokens and summarized by
#               benchmarks/trace_summary.py per token: kernels per token, how long the GPU's
#               streams were busy against the step time (idle: launch- or host-bound), and the
#               kernels that took the time (a copy of each layer's weights would show by name);
#               the traces come back in artifacts.tar.gz
#   lm_train_mosaic  the 1b preset at batch 16, remat=dots, attention_impl=pallas_mosaic (the
#               three Mosaic GPU kernels) and pallas_mosaic:dq=atomic (two: dQ from the dK/dV
#               kernel) against 46.8% MFU with pallas
#   decode_7b   the same for Llama-2-7B's shape, bf16 and int8 (the config's, and with separate
#               layers): where a layer's weights (400 MB,
#               about 100 us at the H200's bandwidth) outweigh its kernel launches, so where the 70%
#               roofline target can be judged (at 135M a layer takes 44 us, at 1.1B 116 us, of
#               which launches are most of the first and half of the second: BENCHMARKS.md)
#   decode_7b_long  Llama-2-7B's shape in bf16 at a 3900-token prompt (4000 cached tokens), the
#               rolled loop (the flash kernel reading each layer's keys and values in place in the
#               stacked cache, split over the SMs, since the seventh session of 2026-12-04;
#               aot_hlo.py: 1.01x the bytes to read, was 1.29x) beside separate layers
#   attention_decode  a decoding step's attention against 1k to 32k cached keys (Llama-2-7B's 32
#               heads of 128; the 1b preset's 32 query and 4 kv heads of 64): XLA, the Pallas
#               kernel splitting the keys over programs (Flash-Decoding, since the seventh session
#               of 2026-12-04: one query block per head had kept 32 programs busy) and unsplit
#   decode_1b_int32  the 1.1B rows in int8 and int4 at batch 32, by XLA and by the Pallas kernel
#               (aot_hlo.py: XLA writes the dequantized kernels every step, 4.53x the bytes to
#               read in int8; the kernel 2.08x, about bf16's bytes; weight_matmul_impl=auto
#               takes the kernel from half a scale group of rows since the seventh session of
#               2026-12-04)
#   lm_train_flags  the 1b run (remat=dots) with XLA:GPU's GEMMs all by cuBLAS
#               (--xla_gpu_enable_triton_gemm=false), then all it can by Triton
#               (--xla_gpu_triton_gemm_any=true), from JAX's and NVIDIA's GPU performance guides,
#               then without zero-filling the stacks the layer loop saves activations into
#               (--xla_gpu_enable_dus_accumulator_zero_init_elimination: by aot_hlo.py, 27.7 of
#               the step's 326.7 GiB of memory-bound traffic, about 6 ms)
#   lm_train_trace  two steps of the 1b preset (batch 16, Pallas attention, remat=dots: 47.5% MFU
#               on 2026-12-04) profiled: which kernels take the step's time (GEMMs, the flash
#               kernels, the optimizer's elementwise passes, copies) and how busy the GPU is
#   decode_1b_graphs  the 1.1B rows (the config's and scan_layers=False, bf16) with XLA's command
#               buffers (CUDA graphs) off, then on for kernels and library calls but not loops
#               (2026-12-04: with WHILE and CONDITIONAL too, 135M decoding got slower): at 135M a
#               layer took 44 us, a dozen launches; without a layer loop one step is a straight
#               run of kernels a graph can hold, so launches may stop dominating
#   decode_hlo  XLA:GPU's optimized HLO of the 1.1B decode loop, rolled and unscanned (in
#               artifacts.tar.gz), summarized by benchmarks/hlo_summary.py (operations per loop
#               body, largest outputs): whether each layer's weights are copied out of the
#               stacks (or concatenated: XLA's dot merger) every step, how many kernels a layer
#               runs
#   lm_train_remat  the 1b preset's MFU with remat=attention and dots_attention (the Pallas flash
#               forward kept, not recomputed); 2026-12-04: full 41.7%, none 43.1%, dots 46.8%
#   attention   benchmarks/attention.py: Pallas flash vs cuDNN vs the XLA reference, forward +
#               backward, 1k to 32k, each checked against a float32 reference first, then each
#               forward pass alone at 8k (is the gap to cuDNN in the forward or the backward
#               kernels?) beside the forward of JAX's own Mosaic GPU attention example (wgmma,
#               TMA: would a Mosaic GPU kernel close the gap?), with a column for the Pallas kernel's dQ by atomic adds (dq_atomic: 5
#               matmuls per tile pair in the backward instead of 7), then the Pallas kernel at 8k
#               with four Triton warps x stages settings (its default tiles beat four others on
#               2026-12-04; at 0.56x cuDNN, warps and pipelining are next)
#   attention_1b  the same at the 1b preset's own attention shape (32 query heads, 4 kv heads of
#               64, length 2048: what its training step runs, unmeasured so far), with Pallas tile
#               and Triton settings swept there: its defaults were tuned at head_dim 128
#   decode      SmolLM2-135M's architecture (its 98 MB GGUF cannot travel) at batch 1 and 32, with
#               transformers' generate on the same weights; the model's attention is "auto" (the
#               flash kernel over the cache on a GPU) since 2026-12-04 (sixth session), with a
#               row of XLA's attention beside it
#   moe         benchmarks/moe.py at the 1b preset's MLP shape (d 2048, 8 experts of 5632, top-2,
#               bf16, 2k and 8k tokens a sequence): the MoE MLP's forward + backward against a dense
#               SwiGLU doing the same products per token (slots by index since the fourth session
#               of 2026-12-05; on the 2-core CPU 1.5x the dense time, was 3-8.6x)
#   decode_moe  benchmarks/decode.py at batch 1 for Mixtral-8x7B's layers (8 of its 32, random
#               weights; benchmarks/mixtral_8x7b_8_layers_config.json), bf16 and int8 experts, with
#               the roofline of the bytes a step must read (step_bytes.py: 2 of 8 experts): by
#               aot_hlo.py bf16 moves 2.77x those bytes (XLA copies each chosen expert's slice),
#               int8 1.12x
#   lm_train    benchmarks/lm_train.py: the 1b preset at batch 16, Pallas attention, MFU
#   lm_train_xla  the 1b run with the XLA reference attention, for the ratio
# STAGES="decode attention" runs a subset; LIMIT_<stage>=SECONDS changes one stage's limit and
# ARGS_<stage>="--flag=value ..." appends flags to its command (a later absl flag wins), e.g. the
# CPU rehearsal: STAGES=attention ARGS_attention="--lengths=128 --tokens_per_batch=128 --num_heads=4
# --num_kv_heads=2 --head_dim=32 --check_length=100 --impls=xla,pallas" bash benchmarks/device_checks.sh
# (a rehearsal of the Mosaic GPU kernels, interpreted, needs XLA_FLAGS=--xla_force_host_platform_
# device_count=8, as the tests have: a forward + backward on one CPU device deadlocked JAX's
# interpreter in 3 to 6 of 6 runs on the 2-core VM, on 8 devices in none of 6). lm_train_mosaic's
# rehearsal (21 s): ARGS_lm_train_mosaic="--config=configs/llm/pretrain.py:tiny --batch_size=1
# --steps=1 --warmup=0 --set=mesh.num_devices=1 --set=model.remat=none --set=model.dtype=bfloat16
# --set=model.head_dim=64 --set=model.num_heads=2 --set=model.num_kv_heads=1
# --set=model.embed_dim=128 --set=model.num_layers=1": one layer on a one-device mesh (over 8
# fake devices the interpreter's backward kernels hung a train step; ops.attention now refuses
# that), no remat (the interpreter's host callbacks cannot sit under it: JAX refuses effects in
# remat)
set -uo pipefail
cd "$(dirname "$0")/.."
export OUT="${OUT:-/tmp/device_checks}" ART=/tmp/device_artifacts  # Stages write to both (bash -c).
LOGS=/tmp/device_stage_logs
mkdir -p "$OUT" "$ART" "$LOGS"
export PYTHONUNBUFFERED=1 PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
if compgen -G ".whl/*.whl" > /dev/null; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/site .whl/*.whl || exit 1
  export PYTHONPATH="$PYTHONPATH:/tmp/site"
fi

check_environment() {
python3 - <<'EOF' 2>&1 | tee -a "$OUT/stages.txt"
import importlib.metadata as md
import jax
print("devices:", jax.devices())
for name in ("jax", "jaxlib", "flax", "optax", "orbax-checkpoint", "chex", "grain", "torch",
             "transformers", "triton"):
  try:
    print(f"  {name} {md.version(name)}")
  except md.PackageNotFoundError:
    print(f"  {name} missing")
import gen_jax.families, gen_jax.sampling, gen_jax.ops  # noqa: E401 - fails here, not per stage.
EOF
return "${PIPESTATUS[0]}"
}
# The image's own flax/optax/orbax/chex first; if gen_jax does not import with them, the versions
# in .whl/core/ (device_wheels.sh), so that one call of the lease is not lost to a version skew.
if ! check_environment; then
  if compgen -G ".whl/core/*.whl" > /dev/null; then
    echo "environment check failed with the image's packages: trying .whl/core/"
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
      --target /tmp/site_core .whl/core/*.whl || exit 1
    export PYTHONPATH="$PWD:/tmp/site_core${PYTHONPATH#"$PWD"}"
    check_environment || { echo "environment check failed: see above"; exit 1; }
  else
    echo "environment check failed: see above"; exit 1
  fi
fi

declare -A COMMANDS=(
  [attention]="python3 benchmarks/attention.py --repeats=5 --impls=xla,pallas,pallas:dq=atomic,pallas_mosaic,cudnn --pallas_triton=4x2,4x3,8x3,8x4"
  [attention_1b]="python3 benchmarks/attention.py --repeats=5 --impls=xla,pallas,pallas:dq=atomic,cudnn --lengths=2048 --num_heads=32 --num_kv_heads=4 --head_dim=64 --sweep_length=2048 --pallas_blocks=64x64,64x128,128x64,128x128 --pallas_triton=4x3,8x3"
  [lm_train]="python3 benchmarks/lm_train.py --config=configs/llm/pretrain.py:1b --batch_size=16 --set=model.attention_impl=pallas"
  [decode]="python3 benchmarks/decode.py --hf_config=benchmarks/smollm2_135m_config.json --weights=bfloat16,int8,int4 --draft_layers=0 --nono_cache --variants='scan_layers=False;scan_layers=False,attention_impl=xla'"
  [decode_1b]="python3 benchmarks/decode.py --hf_config=benchmarks/llama_1b_config.json --weights=bfloat16,int8,int4 --batch_sizes=1 --draft_layers=0 --nohf --nono_cache --variants='scan_layers=False'"
  [decode_1b_options]="for options in none decoding; do echo \"| --xla_options=\$options |\"; python3 benchmarks/decode.py --hf_config=benchmarks/llama_1b_config.json --weights=bfloat16 --batch_sizes=1,32 --draft_layers=0 --nohf --nono_cache --xla_options=\$options {ARGS}; done"
  [decode_1b_graphs]="for flags in --xla_gpu_enable_command_buffer= --xla_gpu_enable_command_buffer=FUSION,CUBLAS,CUBLASLT,CUSTOM_CALL,CUDNN; do echo \"| XLA_FLAGS=\$flags |\"; XLA_FLAGS=\$flags python3 benchmarks/decode.py --hf_config=benchmarks/llama_1b_config.json --weights=bfloat16 --batch_sizes=1 --draft_layers=0 --nohf --nono_cache {ARGS}; done"
  [decode_trace]="rm -rf /tmp/decode_trace; python3 benchmarks/decode.py --hf_config=benchmarks/llama_1b_config.json --weights=bfloat16 --batch_sizes=1 --draft_layers=0 --nohf --nono_cache --repeats=1 --new_tokens=32 --variants='scan_layers=False;scan_layers=False,steps_per_check=8' --trace_dir=/tmp/decode_trace {ARGS}; for f in \$(find /tmp/decode_trace -name perfetto_trace.json.gz); do d=\${f#/tmp/decode_trace/}; cp \$f \$ART/decode_trace_\${d%%/*}.json.gz; done"
  [lm_train_trace]="rm -rf /tmp/lm_train_trace; python3 benchmarks/lm_train.py --config=configs/llm/pretrain.py:1b --batch_size=16 --set=model.attention_impl=pallas --set=model.remat=dots --steps=3 --trace_dir=/tmp/lm_train_trace {ARGS}; cp \$(find /tmp/lm_train_trace -name perfetto_trace.json.gz | head -1) \$ART/lm_train_trace.json.gz"
  [decode_7b]="python3 benchmarks/decode.py --hf_config=benchmarks/llama_7b_config.json --weights=bfloat16,int8 --batch_sizes=1 --draft_layers=0 --nohf --nono_cache --variants=scan_layers=False"
  [kernel_tests]="env GEN_JAX_COMPILED_KERNELS=1 python3 -m pytest -q -p no:cacheprovider tests/kernels tests/ops/test_cudnn_packed.py -k 'gpu or quantized_matmul'"
  [decode_7b_long]="python3 benchmarks/decode.py --hf_config=benchmarks/llama_7b_config.json --weights=bfloat16 --batch_sizes=1 --prompt_tokens=3900 --new_tokens=100 --draft_layers=0 --nohf --nono_cache --variants=scan_layers=False"
  [decode_1b_int32]="python3 benchmarks/decode.py --hf_config=benchmarks/llama_1b_config.json --weights=int8,int4 --batch_sizes=32 --weight_matmul_impls=xla,pallas --draft_layers=0 --nohf --nono_cache --variants=''"
  [attention_decode]="for shape in '--num_heads=32 --num_kv_heads=32 --head_dim=128' '--num_heads=32 --num_kv_heads=4 --head_dim=64'; do python3 benchmarks/attention.py \$shape --lengths= --check_length=0 --nosplit_forward --decode_lengths=1024,4096,16384,32768 {ARGS}; done"
  [lm_train_cudnn]="for remat in dots dots_attention; do echo \"| remat=\$remat |\"; python3 benchmarks/lm_train.py --config=configs/llm/pretrain.py:1b --batch_size=16 --set=model.attention_impl=cudnn --set=model.remat=\$remat {ARGS}; done"
  [attention_mosaic]="python3 benchmarks/attention.py --repeats=5 --impls=pallas,pallas_mosaic,pallas_mosaic:dq=atomic,cudnn --lengths=2048,8192 --mosaic_example_tiles=64x128 {ARGS}; python3 benchmarks/attention.py --repeats=5 --impls=pallas,pallas_mosaic,pallas_mosaic:dq=atomic,cudnn --lengths=2048 --num_heads=32 --num_kv_heads=4 --head_dim=64 --sweep_length=2048 --mosaic_example_tiles= {ARGS}"
  [lm_train_mosaic]="for impl in pallas_mosaic pallas_mosaic:dq=atomic; do echo \"| attention_impl=\$impl |\"; python3 benchmarks/lm_train.py --config=configs/llm/pretrain.py:1b --batch_size=16 --set=model.attention_impl=\$impl --set=model.remat=dots {ARGS}; done"
  [lm_train_xla]="python3 benchmarks/lm_train.py --config=configs/llm/pretrain.py:1b --batch_size=16 --set=model.attention_impl=xla"
  [decode_moe]="python3 benchmarks/decode.py --hf_config=benchmarks/mixtral_8x7b_8_layers_config.json --weights=bfloat16,int8 --batch_sizes=1 --draft_layers=0 --nohf --nono_cache --variants=''"
  [moe]="python3 benchmarks/moe.py --dtype=bfloat16 --embed=2048 --mlp=5632 --experts=8 --top_k=2 --lengths=2048,8192 --tokens_per_batch=32768"
  [decode_hlo]="rm -rf /tmp/hlo; XLA_FLAGS='--xla_dump_to=/tmp/hlo --xla_dump_hlo_as_text --xla_dump_hlo_module_re=.*generate.*' python3 benchmarks/decode.py --hf_config=benchmarks/llama_1b_config.json --weights=bfloat16 --batch_sizes=1 --draft_layers=0 --nohf --nono_cache --repeats=1 --new_tokens=8 {ARGS}; n=0; for f in \$(ls /tmp/hlo/*generate*after_optimizations.txt | head -2); do n=\$((n + 1)); cp \$f \$ART/decode_hlo_\$n.txt; done; python3 benchmarks/hlo_summary.py --top=6 \$ART/decode_hlo_*.txt"
  [lm_train_flags]="for flags in --xla_gpu_enable_triton_gemm=false --xla_gpu_triton_gemm_any=true --xla_gpu_enable_dus_accumulator_zero_init_elimination=true; do echo \"| XLA_FLAGS=\$flags |\"; XLA_FLAGS=\$flags python3 benchmarks/lm_train.py --config=configs/llm/pretrain.py:1b --batch_size=16 --set=model.attention_impl=pallas --set=model.remat=dots {ARGS}; done"
  [lm_train_remat]="for remat in attention dots_attention; do echo \"| remat=\$remat |\"; python3 benchmarks/lm_train.py --config=configs/llm/pretrain.py:1b --batch_size=16 --set=model.attention_impl=pallas --set=model.remat=\$remat {ARGS}; done"
)
# Seen on an H200 (2026-12-04): attention 128 s (with a tile sweep since dropped), lm_train 34 s,
# decode 104 s and decode_1b 29 s, before the separate-layer and Pallas int-matmul rows (the
# unrolled decoders' compiles took over 30 s each there; not yet measured).
declare -A LIMITS=([decode_trace]=150 [lm_train_trace]=80 [attention]=220 [attention_1b]=100 [lm_train]=60 [decode]=150 [decode_1b]=180 [decode_7b]=140
                   [decode_hlo]=60 [decode_1b_options]=90 [decode_1b_graphs]=90
                   [lm_train_xla]=70 [lm_train_remat]=100 [lm_train_flags]=140 [kernel_tests]=120 [lm_train_cudnn]=120 [attention_decode]=90 [decode_1b_int32]=90 [decode_7b_long]=120
                   [attention_mosaic]=120 [lm_train_mosaic]=200 [moe]=90 [decode_moe]=150)
DEFAULT_STAGES="decode_1b lm_train_cudnn kernel_tests attention_mosaic decode_1b_options"
for stage in ${STAGES:-$DEFAULT_STAGES}; do
  limit_var="LIMIT_$stage"
  args_var="ARGS_$stage"
  limit="${!limit_var:-${LIMITS[$stage]}}"
  command="${COMMANDS[$stage]}"
  if [[ "$command" == *"{ARGS}"* ]]; then  # A stage of several commands marks where flags go.
    command="${command//\{ARGS\}/${!args_var:-}}"
  else
    command="$command ${!args_var:-}"
  fi
  echo "=== $stage (limit ${limit} s): $command"
  start=$SECONDS
  timeout "$limit" bash -c "$command" > "$LOGS/$stage.txt" 2>&1
  echo "=== $stage: exit $? after $((SECONDS - start)) s" | tee -a "$LOGS/$stage.txt"
  cat "$LOGS/$stage.txt" >> "$OUT/stages.txt"
  if [ -n "$(ls -A "$ART")" ]; then  # Written whole, then renamed: a cut call leaves no half file.
    tar czf "$OUT/.artifacts.tar.gz" -C "$ART" . && mv "$OUT/.artifacts.tar.gz" "$OUT/artifacts.tar.gz"
  fi
done

# The results last, where the reply's output tail keeps them: a stage's table, or the lines it
# printed as it went when its time ran out before the table.
for stage in ${STAGES:-$DEFAULT_STAGES}; do
  echo; echo "##### $stage"
  if grep -q '^| ' "$LOGS/$stage.txt"; then
    grep -E '^\||check|exit|^ENTRY|^while body' "$LOGS/$stage.txt" | tail -40
  else
    grep -E '^  |exit|Error|passed|failed' "$LOGS/$stage.txt" | tail -20
  fi
done
