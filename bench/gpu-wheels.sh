#!/usr/bin/env bash
# Fetch, here, the wheels bench/gpu.sh needs on a GPU machine that has torch, transformers and peft
# but not the rest (no network there): into .whl/, for CPython 3.12 on x86-64 Linux.
#   echo /.whl/ >> .git/info/exclude; bash bench/gpu-wheels.sh      # then carry .whl to the machine
set -euo pipefail
cd "$(dirname "$0")/.."
mkdir -p .whl
pkgs=(trl==1.16.0 transformers==5.24.0 accelerate==1.16.0 datasets==5.2.0 dill==0.4.1 multiprocess==0.70.19
      doit==0.37.0 pydantic==2.14.4 pydantic-core==2.50.5 annotated-types typing-inspection duckdb==2.0.1
      huggingface-hub)
for p in "${pkgs[@]}"; do
  python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
    --platform manylinux2014_x86_64 --platform manylinux1_x86_64 -d .whl "$p"
done
du -sh .whl
