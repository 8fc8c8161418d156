#!/usr/bin/env bash
# GPU check: throughput and quality of our server on CUDA (fp16, a pool over every GPU), in one
# go, in under ten minutes. Two steps, because the GPU host has no network:
#
#   1. here (CPU dev machine, PyPI reachable):   bash benchmarks/gpu_check.sh prepare
#      builds .scratch/gpu_carry/ (git-ignored, < 64 MiB): the default model with its weights
#      stored as float16 (half the bytes; the run computes in fp16 anyway, so nothing is lost),
#      SciFact + STS-B copied from ../shared/data, and cp312 manylinux wheels of what the GPU
#      image lacks (lmdb, usearch, grpcio*, protobuf, googleapis-common-protos, platformdirs).
#   2. on the GPU host, with .scratch/gpu_carry carried:   bash benchmarks/gpu_check.sh run
#      (device tool: run(command="bash benchmarks/gpu_check.sh run", carry=[".scratch/gpu_carry"]))
#
# Assumptions about the GPU host (the workplace's 'cuda' image): python3 is 3.12 with a CUDA
# torch, sentence-transformers, transformers, tokenizers, onnx, onnxruntime, numpy, tqdm and
# prometheus-client installed; nothing can be downloaded. The project is used from the
# checkout (PYTHONPATH), never pip-installed there, so its torch==2.13.0 pin does not apply.
# Results (tables, JSON) go to $OUT when set (the device tool's result folder), else /tmp.
set -euo pipefail
cd "$(dirname "$0")/.."
CARRY=.scratch/gpu_carry
PY=${PYTHON:-python3}

prepare() {
  local here_py=${HERE_PYTHON:-.venv/bin/python}
  rm -rf "$CARRY" && mkdir -p "$CARRY/wheels" "$CARRY/data"
  "$here_py" -m pip download -q --only-binary=:all: --no-deps -d "$CARRY/wheels" \
    --python-version 3.12 --implementation cp --abi cp312 --platform manylinux_2_28_x86_64 \
    --platform manylinux2014_x86_64 --platform manylinux_2_17_x86_64 \
    'lmdb>=1.6' 'usearch>=2.26,<3' 'grpcio==1.85.1' 'grpcio-health-checking==1.85.1' \
    'grpcio-reflection==1.85.1' 'grpcio-status==1.85.1' 'protobuf>=6.31,<7' \
    'googleapis-common-protos>=1.63' 'platformdirs>=4'
  "$here_py" - "$CARRY/model" <<'PY'
import shutil, sys
from pathlib import Path
from safetensors.torch import load_file, save_file
from server.model import load_spec
src, dst = load_spec().path, Path(sys.argv[1])
shutil.copytree(src, dst, ignore=shutil.ignore_patterns("*.safetensors", "*.bin", "README.md", "data_config.json"))
for weights in src.glob("*.safetensors"):
    tensors = {k: v.half() if v.is_floating_point() else v for k, v in load_file(str(weights)).items()}
    save_file(tensors, str(dst / weights.name), metadata={"format": "pt"})
print("model (fp16 weights) ->", dst)
PY
  cp -r ../shared/data/scifact "$CARRY/data/" && cp ../shared/data/stsb/sts-test.csv "$CARRY/data/"
  chmod -R u+w "$CARRY"
  du -sh "$CARRY"
}

run() {
  local out=${OUT:-/tmp/gpu_check} t0=$SECONDS
  mkdir -p "$out"
  [ -d "$CARRY/wheels" ] || { echo "missing $CARRY: run 'bash benchmarks/gpu_check.sh prepare' first and carry it" >&2; exit 2; }
  "$PY" -m pip install -q --no-index --find-links "$CARRY/wheels" --no-deps "$CARRY"/wheels/*.whl
  export PYTHONPATH=$PWD HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$out/gpus.txt"
  "$PY" -c "import torch; print('torch', torch.__version__, 'GPUs', torch.cuda.device_count())" | tee -a "$out/gpus.txt"
  local model=$CARRY/model data=$CARRY/data
  # Throughput: in-process ST fp32/fp16 on cuda:0 vs our server (device auto = every GPU, fp16).
  timeout 330 "$PY" benchmarks/bench_throughput.py --device cuda --model "$model" \
    --dataset "$data/scifact" --backends torch --no-infinity --concurrency 16 --batch-size 128 \
    --server-arg=--device=auto --server-arg=--dtype=float16 --server-arg=--max-batch-tokens=65536 \
    --json "$out/gpu_throughput.json" 2>&1 | tee "$out/gpu_throughput.txt" || echo "throughput step failed ($?)"
  # Quality at fp16 through the server path: SciFact nDCG@10 and STS-B Spearman.
  timeout 200 "$PY" - "$model" "$data" "$out" <<'PY' 2>&1 | tee "$out/gpu_quality.txt" || echo "quality step failed"
import subprocess, sys, tempfile
from pathlib import Path
sys.path.insert(0, "benchmarks")
from _common import embed_server
model, data, out = sys.argv[1:4]
with tempfile.TemporaryDirectory() as tmp, embed_server(
    Path(tmp) / "data", "--model", model, "--device", "auto", "--dtype", "float16", "--log-level", "WARNING"
) as address:
    subprocess.run([sys.executable, "-m", "server", "eval", "--server", address, "--dataset", f"{data}/scifact",
                    "--sts", f"{data}/sts-test.csv", "--configs", "server/*", "--json", f"{out}/gpu_quality.json"])
PY
  echo "gpu_check done in $((SECONDS - t0)) s; results in $out"
}

case "${1:-}" in
  prepare) prepare ;;
  run) run ;;
  *) echo "usage: $0 prepare|run" >&2; exit 2 ;;
esac
