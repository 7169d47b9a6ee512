#!/usr/bin/env bash
# The whole GPU run in one command, on a machine with a GPU, nvcc, CMake, ninja and PyTorch
# (whose CUDA libtorch the build uses) and nothing else installed:
#   bash bench/gpu_packages.sh            # first, on a machine that reaches Debian's archive
#   bash bench/run_gpu.sh                 # then on the GPU machine, bench/gpu-packages carried
# Steps: unpacks the carried Debian packages into build-gpu/prefix (dpkg -x); configures the
# engine-only build (DELTASERVE_ENGINE_ONLY: no gRPC, protobuf or Prometheus) against
# PyTorch's libtorch (Torch_DIR from python3) with the CUDA kernels; runs its unit tests (the
# SGMV kernel test runs on the GPU there); writes the medium demo model and 128 rank-16
# adapters; runs the engine benchmark on cuda in bfloat16 (batch-1 decode against the bandwidth
# floor, concurrency, K = 1, 32, 128 distinct adapters against base-only and one at a time);
# then bench/peft_bench.py: Hugging Face transformers + PEFT on a Llama-2-7B-shaped random
# model with 32 rank-16 adapters (adapter_names=), and deltaserve's engine on the same shape.
set -euo pipefail
cd "$(dirname "$0")/.."
packages=bench/gpu-packages
[ -d "$packages" ] || { echo "no $packages: run bench/gpu_packages.sh where Debian's archive is reachable, and carry it"; exit 1; }
build=build-gpu
prefix="$PWD/$build/prefix"
mkdir -p "$prefix"
for deb in "$packages"/*.deb; do dpkg -x "$deb" "$prefix"; done
lib="$prefix/usr/lib/x86_64-linux-gnu"
export LD_LIBRARY_PATH="$lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
# The packages' .pc files name /usr: the sysroot puts the prefix in front of their paths.
export PKG_CONFIG_SYSROOT_DIR="$prefix" PKG_CONFIG_LIBDIR="$lib/pkgconfig:$prefix/usr/share/pkgconfig"
torch_prefix=$(python3 -c 'import torch; print(torch.utils.cmake_prefix_path)')
python3 -c 'import torch; print("torch", torch.__version__, "cuda", torch.version.cuda, torch.cuda.get_device_name(0))'

cmake -S . -B "$build" -G Ninja -DCMAKE_BUILD_TYPE=Release -DDELTASERVE_ENGINE_ONLY=ON \
  -DCMAKE_PREFIX_PATH="$torch_prefix;$prefix/usr" -DPKG_CONFIG_EXECUTABLE="$prefix/usr/bin/pkgconf" \
  -DCMAKE_CUDA_ARCHITECTURES=90 -DCMAKE_BUILD_RPATH="$lib"
ninja -C "$build"
echo "== unit tests (engine-only build)"
(cd "$build" && ctest --output-on-failure -j4 | tail -15)

model="$build/bench-medium"
[ -f "$model/config.json" ] || "$build/tools/deltaserve-make-demo" --out "$model" --size medium
[ -d "$model/adapters/demo-127" ] || "$build/tools/deltaserve-make-demo" --out "$model" --size medium --adapters 128 --rank 16
echo "== engine benchmark on cuda (medium demo model)"
"$build/bench/deltaserve-bench-engine" --model-dir "$model" --device cuda --decode-tokens 128 \
  --adapters-dir "$model/adapters" --adapter-counts 1,32,128 --adapter-requests 256 \
  --device-cache-adapters 128 --host-cache-adapters 128

echo "== PEFT against deltaserve (Llama-2-7B shape, random bf16 weights, 32 rank-16 adapters)"
python3 bench/peft_bench.py --out "$build/peft-7b" --engine-bench "$build/bench/deltaserve-bench-engine"
