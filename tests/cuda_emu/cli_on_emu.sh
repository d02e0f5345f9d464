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
out=$("$exe" eval --run "$tmp/gpu" --device cuda --batches 2)
grep -q "cuda, fp32 GEMMs" <<< "$out" || fail "eval --device cuda printed: $out"
out=$("$exe" bench --device cuda --L 1 --C 32 --H 2 --vocab 64 --B 2 --T 16 --steps 1 --warmup 1 --matmul-precision bf16)
grep -q '"device":"cuda"' <<< "$out" && grep -q '"peak_device_mb"' <<< "$out" || fail "bench printed: $out"
out=$("$exe" bench --device cuda --L 1 --C 32 --H 2 --vocab 64 --B 2 --T 16 --steps 1 --warmup 1 --profile 2>/dev/null)
grep -q '"op":"attention_backward"' <<< "$out" && grep -q '"op":"adamw_chunks"' <<< "$out" || fail "bench --profile printed: $out"
echo "cli_on_emu: eval, bench and bench --profile on device cuda ok"
