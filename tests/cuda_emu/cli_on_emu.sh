#!/usr/bin/env bash
# The lmforge program built on the CPU emulation of CUDA (emu_lmforge), end to end on real text:
# train with device = "cuda" (stopped and resumed), against the same run on the CPU; then eval
# and bench on the device. Usage: cli_on_emu.sh EMU_LMFORGE SOURCE_DIR
set -euo pipefail
exe=$1; src=$2
tmp=$(mktemp -d); trap 'rm -rf "$tmp"' EXIT
fail() { echo "cli_on_emu: $*" >&2; exit 1; }
"$exe" prepare --input "$src/tests/data/sotu_sample" --output "$tmp/data" --val-fraction 0.2 --seed 3 > /dev/null
common=(--set model.n_layer=2 --set model.n_embd=64 --set model.n_head=4 --set model.block_size=64
        --set train.seq_len=64 --set train.batch_size=4 --set train.threads=2 --set log.progress=off
        --set train.steps=12 --set train.eval_every=6 --set train.eval_batches=2 --set checkpoint.every=6
        --set data.dir="$tmp/data")
"$exe" train "${common[@]}" --set log.run_dir="$tmp/cpu" > /dev/null
"$exe" train "${common[@]}" --set train.device=cuda --set log.run_dir="$tmp/gpu" --stop-at 6 > /dev/null
"$exe" train "${common[@]}" --set train.device=cuda --set log.run_dir="$tmp/gpu" > /dev/null
# Losses: the device run within 1e-3 of the CPU's at every step (and the last val loss); peak
# device memory recorded on every line.
field() { grep -o "\"$1\":[^,}]*" "$2" | cut -d: -f2; }
[ "$(wc -l < "$tmp/cpu/metrics.jsonl")" -eq 12 ] && [ "$(wc -l < "$tmp/gpu/metrics.jsonl")" -eq 12 ] ||
  fail "expected 12 metric lines per run"
paste <(field train_loss "$tmp/cpu/metrics.jsonl") <(field train_loss "$tmp/gpu/metrics.jsonl") |
  awk '{ d = $1 - $2; if (d < 0) d = -d; if (d > 1e-3 * $1) { print "step " NR ": cpu " $1 ", cuda " $2; bad = 1 } }
       END { exit bad }' || fail "train losses differ"
paste <(field val_loss "$tmp/cpu/metrics.jsonl" | tail -1) <(field val_loss "$tmp/gpu/metrics.jsonl" | tail -1) |
  awk '{ d = $1 - $2; if (d < 0) d = -d; exit !(d <= 1e-3 * $1) }' || fail "val losses differ"
[ "$(grep -c '"peak_device_mb"' "$tmp/gpu/metrics.jsonl")" -eq 12 ] || fail "peak_device_mb missing"
echo "cli_on_emu: 12 steps on device cuda (resumed at 6) follow the CPU's losses"
# [train] cuda_graphs: each micro-batch one graph's launch, the eager run's losses and norms bit for bit.
out=$("$exe" train "${common[@]}" --set train.device=cuda --set train.cuda_graphs=true --set log.run_dir="$tmp/graphs" \
  --set log.progress=plain 2>&1)
grep -q "on cuda, CUDA graphs" <<< "$out" || fail "train with cuda_graphs printed: $out"
for k in train_loss grad_norm val_loss; do
  cmp -s <(field $k "$tmp/gpu/metrics.jsonl") <(field $k "$tmp/graphs/metrics.jsonl") ||
    fail "$k with cuda_graphs differs from the run without"
done
echo "cli_on_emu: cuda_graphs gives the same 12 steps bit for bit"
out=$("$exe" eval --run "$tmp/gpu" --device cuda --batches 2)
grep -q "cuda, fp32 GEMMs" <<< "$out" || fail "eval --device cuda printed: $out"
out=$("$exe" bench --device cuda --L 1 --C 32 --H 2 --vocab 64 --B 2 --T 16 --steps 1 --warmup 1 --matmul-precision bf16)
grep -q '"device":"cuda"' <<< "$out" && grep -q '"peak_device_mb"' <<< "$out" || fail "bench printed: $out"
out=$("$exe" bench --device cuda --L 1 --C 32 --H 2 --vocab 64 --B 2 --T 16 --steps 2 --warmup 1 --cuda-graphs)
grep -q '"cuda_graphs":true' <<< "$out" || fail "bench --cuda-graphs printed: $out"
# LMF_CLASSIFIER_CHUNK_ROWS: another chunk size without a rebuild; junk is one line and exit 2.
LMF_CLASSIFIER_CHUNK_ROWS=5 "$exe" bench --device cuda --L 1 --C 32 --H 2 --vocab 64 --B 2 --T 16 --steps 1 \
  --warmup 0 > /dev/null || fail "bench with LMF_CLASSIFIER_CHUNK_ROWS=5 failed"
set +e
out=$(LMF_CLASSIFIER_CHUNK_ROWS=lots "$exe" bench --device cuda --L 1 --C 32 --H 2 --vocab 64 --B 2 --T 16 \
  --steps 1 --warmup 0 2>&1); rc=$?
set -e
[ $rc -eq 2 ] && grep -q "LMF_CLASSIFIER_CHUNK_ROWS: expected a whole number" <<< "$out" ||
  fail "LMF_CLASSIFIER_CHUNK_ROWS=lots gave rc $rc: $out"
out=$("$exe" bench --device cuda --L 1 --C 32 --H 2 --vocab 64 --B 2 --T 16 --steps 1 --warmup 1 --profile 2>/dev/null)
grep -q '"op":"attention_backward"' <<< "$out" && grep -q '"op":"adamw_chunks"' <<< "$out" || fail "bench --profile printed: $out"
echo "cli_on_emu: eval, bench, bench --cuda-graphs and bench --profile on device cuda ok"
# KV-cache decoding on the device: the trained run samples, and llama2.c's stories260K, greedy,
# prints its published text (../shared/data/tinyllamas/README.md), as on the CPU (test_convert).
"$exe" sample --run "$tmp/gpu" --device cuda --prompt "The Congress" -n 20 --seed 3 > "$tmp/s.txt" ||
  fail "sample --device cuda failed"
[ "$(wc -c < "$tmp/s.txt")" -gt 20 ] || fail "sample --device cuda printed: $(cat "$tmp/s.txt")"
tiny="$src/../shared/data/tinyllamas"
if [ -f "$tiny/stories260K.bin" ]; then
  "$exe" convert --from llama2c --model "$tiny/stories260K.bin" --tokenizer "$tiny/tok512.bin" --output "$tmp/s260" > /dev/null
  out=$("$exe" sample --run "$tmp/s260" --device cuda --prompt "Once upon a time" --temperature 0 -n 57)
  want="Once upon a time, there was a little girl named Lily. She loved to play outside in the park. One day, she saw a big, red ball. She wanted to play with it, but it was too high."
  [ "${out:0:${#want}}" = "$want" ] || fail "stories260K on device cuda printed: $out"
  echo "cli_on_emu: sample on device cuda ok (stories260K's greedy text as published)"
else
  echo "cli_on_emu: sample on device cuda ok ($tiny not here: stories260K skipped)"
fi
