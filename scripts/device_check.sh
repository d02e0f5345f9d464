#!/usr/bin/env bash
# Everything a lent GPU session checks, in one call of the device tool (docs/cuda.md, "Checking on a
# GPU"). Run from the repository root on the GPU machine, with .dev carried:
#   .dev/bundle.txz          scripts/device_bundle.sh build .dev/bundle.txz
#   .dev/hfx_{gpt2,llama,llama_bias}   lmforge's HF exports of tests/fixtures/hf_tiny/* (convert --to hf)
#   .dev/torch_train_bench.py          ../shared/bench/torch_train_bench.py
# Usage: scripts/device_check.sh [STEP...]   steps: tests hf bench more sample lab (default: all). Logs go
# to $OUT. bench: issue 5's target shapes against PyTorch; more: the other modes, smaller shapes.
# PYTHON: the interpreter with PyTorch (and transformers, for hf); default python3.
# CHECK_SECONDS (default 540): the whole call's deadline. Every command's timeout is cut to what is
# left of it, so the call returns its logs before the device tool's 600 s limit, whatever hangs.
set -uo pipefail
out=${OUT:-/tmp/out}; mkdir -p "$out"
steps=("$@"); [ ${#steps[@]} -eq 0 ] && steps=(tests hf bench more sample lab)
deadline=$(( $(date +%s) + ${CHECK_SECONDS:-540} ))
# t SECONDS CMD...: timeout at SECONDS or at the deadline (less 5 s for the summary), if sooner.
t() {
  local want=$1 left=$(( deadline - $(date +%s) - 5 )); shift
  [ "$left" -lt 1 ] && { echo "(skipped, past the deadline: $*)"; return 124; }
  timeout $(( want < left ? want : left )) "$@"
}
root=$PWD
py=${PYTHON:-python3}
# tar's xz, else Python's (lzma is in every CPython).
mkdir -p /tmp/lmf
tar -xJf .dev/bundle.txz -C /tmp/lmf 2>/dev/null ||
  $py -c 'import sys, tarfile; tarfile.open(sys.argv[1]).extractall(sys.argv[2])' .dev/bundle.txz /tmp/lmf ||
  { echo "device_check.sh: cannot unpack .dev/bundle.txz"; exit 1; }
# The tests read their data through the source directory compiled in (LMF_SOURCE_DIR).
# Default: where this project's own sessions build (/work/main); else set LMF_BUILT_SOURCE.
src=${LMF_BUILT_SOURCE:-/work/main}
if [ -n "$src" ] && [ ! -e "$src" ]; then mkdir -p "$(dirname "$src")" && ln -s "$root" "$src"; fi
# cuBLAS 13 and NCCL: the CUDA toolkit's, else the pip wheels beside PyTorch.
libdirs=/tmp/lmf/lib:/usr/local/cuda/lib64
for lib in libcublas.so.13 libnccl.so.2; do
  d=$(find /usr/local/cuda /usr/lib /opt /usr/local/lib -name "$lib" 2>/dev/null | head -1)
  [ -n "$d" ] && libdirs=$libdirs:$(dirname "$d")
done
export LD_LIBRARY_PATH=$libdirs
echo "LD_LIBRARY_PATH=$LD_LIBRARY_PATH"
nvidia-smi -L
summary=$out/summary.txt; : > "$summary"
note() { echo "$*" | tee -a "$summary"; }

for step in "${steps[@]}"; do case $step in
tests)
  for t in test_cuda_ops test_cuda_bf16 test_cuda_matmul test_cuda_attention test_cuda_model test_nccl; do
    t 120 /tmp/lmf/bin/$t > /tmp/$t.log 2>&1; rc=$?
    { echo "######## $t rc=$rc"; cat /tmp/$t.log; } >> "$out/tests.log"
    note "$t rc=$rc $(grep -E '^\[  (PASSED|FAILED|SKIPPED) *\] [0-9]+ tests?' /tmp/$t.log | tr '\n' ' ')"
    grep -E '^\[  FAILED  \]|Failure|error' /tmp/$t.log | head -20 >> "$summary"
  done
  # The model and trainer again with the row attention kernels (the default is tiled;
  # test_cuda_attention runs both).
  LMF_CUDA_ATTENTION=rowwise t 120 /tmp/lmf/bin/test_cuda_model > /tmp/tiled.log 2>&1; rc=$?
  { echo "######## test_cuda_model, LMF_CUDA_ATTENTION=rowwise rc=$rc"; cat /tmp/tiled.log; } >> "$out/tests.log"
  note "test_cuda_model (rowwise attention) rc=$rc $(grep -E '^\[  (PASSED|FAILED|SKIPPED) *\] [0-9]+ tests?' /tmp/tiled.log | tr '\n' ' ')"
  grep -E '^\[  FAILED  \]|Failure|error' /tmp/tiled.log | head -20 >> "$summary" ;;
lab)
  t 120 /tmp/lmf/bin/kernel_lab > "$out/kernel_lab.log" 2>&1; note "kernel_lab rc=$?"
  tail -40 "$out/kernel_lab.log" >> "$summary" ;;
hf)
  {
    mkdir -p /tmp/hf/gpt2 && cp tests/fixtures/hf_tiny/gpt2/tokenizer.json /tmp/hf/gpt2/
    $py -c 'import transformers; print("transformers", transformers.__version__)'
    PYTHONUNBUFFERED=1 t 200 $py tools/hf_reference.py generate /tmp/hf; echo "generate rc=$?"
    for n in gpt2 llama llama_bias; do
      t 100 $py tools/hf_reference.py check-export .dev/hfx_$n tests/fixtures/hf_tiny/$n.reference.safetensors
      echo "check-export $n rc=$?"
    done
  } > "$out/hf.log" 2>&1
  grep -E 'rc=|transformers|max|rror' "$out/hf.log" >> "$summary" ;;
bench)
  # Issue 5's targets, so that a run cut short by the deadline still has them: each shape in bf16
  # storage beside PyTorch bf16 compiled, MFU against the H100/H200 bf16 dense peak (989 TFLOP/s),
  # tokens/s and peak memory in each JSON line. Then GPT-2 124M with CUDA graphs, with the MLP
  # activation kept, and its op profile.
  peak="--peak-tflops 989"
  gpt2="--arch gpt2 --B 16 --T 1024 --steps 8 --warmup 3"
  {
    while read -r name args; do
      echo "== lmforge $name bf16 storage"
      t 150 /tmp/lmf/bin/lmforge bench --device cuda --precision bf16 $peak $args
      echo "== torch $name bf16 compile"
      t 200 $py .dev/torch_train_bench.py --device cuda --dtype bf16 --compile $peak $args
    done <<SHAPES
gpt2-124M $gpt2
llama-1B --arch llama --L 16 --C 2048 --H 32 --KV 8 --vocab 128256 --B 8 --T 1024 --steps 5 --warmup 2
gpt2-1.5B --arch gpt2 --L 48 --C 1600 --H 25 --B 8 --T 1024 --steps 5 --warmup 2
SHAPES
    echo "== lmforge gpt2-124M bf16 storage, CUDA graphs"
    t 150 /tmp/lmf/bin/lmforge bench --device cuda --precision bf16 $peak $gpt2 --cuda-graphs
    echo "== lmforge gpt2-124M bf16 storage, MLP activation kept"
    t 150 /tmp/lmf/bin/lmforge bench --device cuda --precision bf16 $peak $gpt2 --recompute-mlp false
    # Where the bf16 step's time goes, op by op (each op waits for its end: docs/performance.md).
    t 150 /tmp/lmf/bin/lmforge bench --device cuda --precision bf16 $gpt2 --profile \
      > "$out/profile.json" 2> "$out/profile.txt"
    echo "profile rc=$?"
  } > "$out/bench.log" 2>&1
  grep -E '^==|^\{|rc=|rror|skipped' "$out/bench.log" >> "$summary" ;;
more)
  # The other modes at GPT-2 124M's and a small Llama's shapes: fp32 (row and tiled attention),
  # bf16 GEMMs over fp32 storage, 16-byte accesses off, L2-sized classifier chunks, and PyTorch
  # fp32.
  shape=${BENCH_SHAPE:---B 8 --T 1024 --steps 6 --warmup 2}
  {
    for a in gpt2 llama; do
      echo "== lmforge $a fp32, rowwise attention"
      LMF_CUDA_ATTENTION=rowwise t 120 /tmp/lmf/bin/lmforge bench --device cuda --arch $a $shape
      echo "== lmforge $a fp32"; t 120 /tmp/lmf/bin/lmforge bench --device cuda --arch $a $shape
      echo "== lmforge $a bf16 GEMMs"
      t 120 /tmp/lmf/bin/lmforge bench --device cuda --arch $a --matmul-precision bf16 $shape
      echo "== lmforge $a bf16 storage"
      t 120 /tmp/lmf/bin/lmforge bench --device cuda --arch $a --precision bf16 $shape
      echo "== lmforge $a bf16 storage, LMF_CUDA_VEC=0"
      LMF_CUDA_VEC=0 t 120 /tmp/lmf/bin/lmforge bench --device cuda --arch $a --precision bf16 $shape
      # Classifier chunks that fit in L2 (about 32 MB of fp32 logits at V 50257) against the
      # default 128 MiB: the logits read back from L2, the logits GEMM on fewer rows.
      echo "== lmforge $a bf16 storage, LMF_CLASSIFIER_CHUNK_ROWS=160"
      LMF_CLASSIFIER_CHUNK_ROWS=160 t 120 /tmp/lmf/bin/lmforge bench --device cuda --arch $a --precision bf16 \
        $shape
      echo "== torch $a fp32"; t 120 $py .dev/torch_train_bench.py --device cuda --arch $a $shape
    done
  } > "$out/more.log" 2>&1
  grep -E '^==|^\{|rror|skipped' "$out/more.log" >> "$summary" ;;
sample)
  # Sampling speed on the GPU: a GPT-2 of 124M's shape over the byte tokenizer (86M parameters),
  # trained one step on the GPU so it is a run, then the prompt's prefill and 256 greedy tokens in
  # fp32 and in bf16 storage, and 8 samples together (`--stats`: tokens/s of each phase).
  {
    d=/tmp/lmf_sample; rm -rf $d
    t 60 /tmp/lmf/bin/lmforge prepare --input tests/data/sotu_sample --output $d/data --val-fraction 0.1
    t 120 /tmp/lmf/bin/lmforge train --set data.dir=$d/data --set log.run_dir=$d/run --set train.device=cuda \
      --set model.n_layer=12 --set model.n_head=12 --set model.n_embd=768 --set model.block_size=1024 \
      --set train.seq_len=1024 --set train.batch_size=4 --set train.steps=1 --set train.eval_every=0
    prompt=$(for i in $(seq 20); do printf 'The state of the union is strong. '; done)
    for prec in fp32 bf16; do
      echo "== lmforge sample, cuda, $prec storage"
      t 120 /tmp/lmf/bin/lmforge sample --run $d/run --device cuda --precision $prec --prompt "$prompt" -n 256 \
        --temperature 0 --stats > /dev/null
      echo "rc=$?"
    done
    echo "== lmforge sample, cuda, bf16 storage, 8 samples together"
    t 120 /tmp/lmf/bin/lmforge sample --run $d/run --device cuda --precision bf16 --prompt "$prompt" -n 128 \
      --num-samples 8 --stats > /dev/null
    echo "rc=$?"
  } > "$out/sample.log" 2>&1
  grep -E '^==|prompt:|rc=|rror|skipped' "$out/sample.log" >> "$summary" ;;
*) echo "unknown step $step"; exit 2 ;;
esac; done
echo "======== summary"; cat "$summary"
