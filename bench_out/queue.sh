#!/bin/bash
# run after bench1 finishes
while kill -0 13373 2>/dev/null; do sleep 10; done
export PYTHONPATH=.:scripts
B="nice -n 10 python scripts/bench_reconstruction.py --num-samples 16 --seq-len 512 --batch-size 4 --ppl-tokens 4096"
$B --solvers 5 --out bench_out/solvers.jsonl > bench_out/solvers.log 2>&1
$B --rows taylor:neurons:0.2:recon,base magnitude:neurons:0.2:recon,protect+recon expressiveness:neurons:0.2:recon,protect+recon > bench_out/bench2.log 2>&1
$B --rows elimination_compensation:weights:0.5:recon elimination_compensation:neurons:0.2:recon,base > bench_out/bench3.log 2>&1
