#!/usr/bin/env bash
# The GPU numbers issues 4 and 5 ask for, in one call of the lent device machine (an H100/H200).
#
#   bash benchmarks/device_wheels.sh                 # here, once: the wheels that machine lacks
#   run(command="bash benchmarks/device_checks.sh", carry=[".whl"], timeout_s=595)
#
# Stages, most wanted first, each under its own time limit so that a stage that hangs or fails
# leaves the rest their time (560 s in all plus about 20 s of set-up; the lease is 15 minutes of
# device time, the machine's start included; on 2026-12-04 the start took about 30 s, the four
# stages 295 s, which left time for a second, warm call of the optional stages). Each stage's full output lands in $OUT/<stage>.txt;
# the reply carries the end of the combined output, which ends with every stage's results.
#   attention   benchmarks/attention.py: Pallas flash vs cuDNN vs the XLA reference, forward +
#               backward, 1k to 32k, each checked against a float32 reference first, and the
#               Pallas kernel at four tile shapes at 8k (issue 4)
#   lm_train    benchmarks/lm_train.py: the 1b preset at batch 16, Pallas attention, MFU (issue 4)
#   decode      benchmarks/decode.py on SmolLM2-135M's architecture with random weights (its 98 MB
#               GGUF cannot travel): batch 1 and 32, bf16/int8/int4, cache (layer loop rolled and
#               unrolled) vs none, transformers' generate, the batch-1 roofline fraction (issue 5)
#   decode_1b   the same at batch 1 for the 1b preset's shape (TinyLlama-1.1B): at 135M parameters
#               a step reads 0.27 GB, about 60 us at the H200's bandwidth, comparable to the launch
#               overhead of a layer loop, so the roofline target is only reachable by larger models
# Not run unless named in STAGES:
#   lm_train_xla  the 1b run with the XLA reference attention, for the ratio (cuDNN cannot mask
#               packed documents, which training batches carry)
#   kernel_tests  tests/kernels' GPU cases compiled with Triton instead of interpreted
#               (GEN_JAX_COMPILED_KERNELS=1): every awkward shape, mask and offset of the CPU suite
#               (20 tests in 34 s on the H200)
# STAGES="decode attention" runs a subset; LIMIT_<stage>=SECONDS changes one stage's limit and
# ARGS_<stage>="--flag=value ..." appends flags to its command (a later absl flag wins), e.g. the
# CPU rehearsal: STAGES=attention ARGS_attention="--lengths=128 --tokens_per_batch=128 --num_heads=4
# --num_kv_heads=2 --head_dim=32 --check_length=100 --impls=xla,pallas" bash benchmarks/device_checks.sh
set -uo pipefail
cd "$(dirname "$0")/.."
OUT="${OUT:-/tmp/device_checks}"
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
if compgen -G ".whl/*.whl" > /dev/null; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/site .whl/*.whl || exit 1
  export PYTHONPATH="$PYTHONPATH:/tmp/site"
fi

check_environment() {
python3 - <<'EOF' 2>&1 | tee -a "$OUT/environment.txt"
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
  [attention]="python3 benchmarks/attention.py --repeats=5 --pallas_blocks=64x64,64x128,128x64,128x128"
  [lm_train]="python3 benchmarks/lm_train.py --config=configs/llm/pretrain.py:1b --batch_size=16 --set=model.attention_impl=pallas"
  [decode]="python3 benchmarks/decode.py --hf_config=benchmarks/smollm2_135m_config.json --weights=bfloat16,int8,int4 --draft_layers=0"
  [decode_1b]="python3 benchmarks/decode.py --hf_config=benchmarks/llama_1b_config.json --weights=bfloat16,int8,int4 --batch_sizes=1 --draft_layers=0 --nohf --nono_cache"
  [kernel_tests]="env GEN_JAX_COMPILED_KERNELS=1 python3 -m pytest -q -p no:cacheprovider tests/kernels -k gpu"
  [lm_train_xla]="python3 benchmarks/lm_train.py --config=configs/llm/pretrain.py:1b --batch_size=16 --set=model.attention_impl=xla"
)
# Seen on an H200 (2026-12-04): attention 128 s, lm_train 34 s, decode 104 s and decode_1b 29 s
# before the unrolled-decoder rows, whose compiles took over 30 s each there (not yet measured).
declare -A LIMITS=([attention]=150 [lm_train]=70 [decode]=190 [decode_1b]=150 [lm_train_xla]=70 [kernel_tests]=120)
for stage in ${STAGES:-attention lm_train decode decode_1b}; do
  limit_var="LIMIT_$stage"
  args_var="ARGS_$stage"
  limit="${!limit_var:-${LIMITS[$stage]}}"
  command="${COMMANDS[$stage]} ${!args_var:-}"
  echo "=== $stage (limit ${limit} s): $command"
  start=$SECONDS
  timeout "$limit" $command > "$OUT/$stage.txt" 2>&1
  echo "=== $stage: exit $? after $((SECONDS - start)) s" | tee -a "$OUT/$stage.txt"
done

# The results last, where the reply's output tail keeps them: a stage's table, or the lines it
# printed as it went when its time ran out before the table.
for stage in ${STAGES:-attention lm_train decode decode_1b}; do
  echo; echo "##### $stage"
  if grep -q '^| ' "$OUT/$stage.txt"; then
    grep -E '^\||check|exit' "$OUT/$stage.txt" | tail -40
  else
    grep -E '^  |exit|Error|passed|failed' "$OUT/$stage.txt" | tail -20
  fi
done
