#!/usr/bin/env bash
# Run scripts/gpu_check.py on a lent GPU machine (issue 3). Its image has torch and transformers but not diffusers
# or pydantic, so they travel as wheels. Prepare them here once (the device tool's README explains carry):
#   echo /.whl/ >> .git/info/exclude
#   python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
#     --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 -d .whl \
#     diffusers==0.42.1 importlib_metadata==10.2.0 pydantic==2.14.4 pydantic-core==2.50.5 annotated-types==0.8.0 \
#     typing-inspection==0.4.5
# Then, with the device tool: run(command="bash scripts/gpu_check.sh", carry=[".whl"], timeout_s=540)
set -euo pipefail
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
python3 scripts/gpu_check.py --frames "${FRAMES:-200}" --out "${OUT:-/tmp/gpu-check-out}"
