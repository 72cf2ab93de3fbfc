#!/usr/bin/env bash
# Side by side, one after the other in one run: llm-compressor's SparseGPT (its own venv, see
# scripts/bench/llmcompressor.py) and hfprune's wanda with reconstruction, calibration.mode full (the default) and
# one_pass, 50% unstructured and FFN 20%, on SmolLM2-135M with 64 x 512 Lee calibration tokens, 2 threads each.
#   bash scripts/bench/one_pass_speed.sh /tmp/llmc/bin/python bench_out/one_pass_speed
set -euo pipefail
LLMC=${1:?the llm-compressor venv python}
OUT=${2:-bench_out/one_pass_speed}
mkdir -p "$OUT"
"$LLMC" -P scripts/bench/llmcompressor.py --model /tmp/smollm2_hf --num-samples 64 --seq-len 512 \
    --ppl-tokens 4096 --ppl-seq-len 512 --methods sparsegpt --structures 0:0 --threads 2 | tee "$OUT/llmcompressor.jsonl"
PYTHONPATH=.:scripts python scripts/bench/defaults.py --threads 2 --ppl-tokens 4096 --out "$OUT/hfprune.jsonl" \
    --rows wanda:weights:0.5 wanda:weights:0.5:calibration_mode=one_pass \
    wanda:neurons:0.2 wanda:neurons:0.2:calibration_mode=one_pass
