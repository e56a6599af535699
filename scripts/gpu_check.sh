#!/usr/bin/env bash
# Run scripts/gpu_check.py on a lent GPU machine (issue 3). Its image has torch, transformers and OpenCV but not
# diffusers, pydantic, moderngl or python-osc, so they travel as wheels, and the GL loader libraries as .debs (for
# the full-loop run on a headless EGL context). Prepare them here once (.whl/ and .gl/ are git-ignored):
#   python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
#     --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
#     --platform manylinux2014_x86_64 --platform manylinux1_x86_64 -d .whl \
#     diffusers==0.42.1 importlib_metadata==10.2.0 pydantic==2.14.4 pydantic-core==2.50.5 annotated-types==0.8.0 \
#     typing-inspection==0.4.5 moderngl==5.13.0 glcontext==3.1.0 python-osc==1.10.2
#   mkdir -p .gl /tmp/amd64/partial; o='-oAPT::Architecture=amd64 -oAPT::Architectures=amd64 -oDir::State::Lists=/tmp/amd64'
#   apt-get $o update; (cd .gl && apt-get $o download libegl1 libglvnd0 libopengl0 libgl1 libglx0 libgles2)
# Then, with the device tool: run(command="bash scripts/gpu_check.sh", carry=[".whl", ".gl"], timeout_s=560)
# ARGS passes more flags to gpu_check.py (e.g. ARGS="--compile" or ARGS="--no-sdxl").
set -uo pipefail
if compgen -G ".gl/*.deb" > /dev/null; then
  for f in .gl/*.deb; do dpkg -x "$f" /; done
  ldconfig
fi
vendor=/usr/local/nvidia/share/glvnd/egl_vendor.d/10_nvidia.json
[ -f "$vendor" ] && export __EGL_VENDOR_LIBRARY_FILENAMES=$vendor
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
python3 scripts/gpu_check.py --frames "${FRAMES:-200}" --out "${OUT:-/tmp/gpu-check-out}" ${ARGS:-}
