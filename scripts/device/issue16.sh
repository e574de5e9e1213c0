#!/usr/bin/env bash
# Issue 16's GPU measurements in one device call, on what scripts/device/prepare.sh put in .device/:
#   run  command: bash scripts/device/issue16.sh   carry: [".device"]   timeout_s: 600
# In order, each under its own timeout and all inside BUDGET_S (default 540 s), each step's output tee'd
# to $OUT/<step>.txt as it runs (so a killed step still brings back what it printed):
#   env                    GPU, driver, torch/transformers, cores; the carried wheels installed (--no-deps,
#                          into a --target folder on PYTHONPATH) and the imports of every step checked
#   train_throughput       benchmarks/train_throughput.py --compile: before (the step as it was) and after
#                          (run.compile's step: blocks, vision tower and loss compiled), florenz-0.4b and
#                          florenz-3.5b at batch 128 and 512 (a row that does not fit prints "out of
#                          memory"), 8 timed steps after 2 (SIZES, BATCHES, STEPS override)
#   train_profile          benchmarks/train_profile.py: the loss chunk eager vs compiled, the eager step's
#                          phases and top kernels, eager vs compiled samples/s (0.4b at 512, 3.5b at 256)
#   train_e2e              florenz-train, florenz-0.4b from random weights on the carried pipeline shards
#                          (.device/train-florenz-0.4b.yaml: bf16, compiled, batch 512, 200 steps, 12
#                          workers); its samples/s from metrics.jsonl beside the synthetic benchmark's rows
#   loader_throughput      benchmarks/loader_throughput.py on .device/out with every core, in the time left
# then summary.txt: each step's exit code and seconds. The eager before/after rows and the loader were
# measured on an H200 on 2026-11-30 (benchmarks/results/train_throughput_h200.txt).
#   bash scripts/device/issue16.sh --cpu-smoke   the same steps on this machine's CPU with .venv, toy sizes
#                                                and a few steps (outputs in $OUT, default /tmp/issue16-out)
set -uo pipefail
cd "$(dirname "$0")/../.."
smoke=false
[[ "${1:-}" == "--cpu-smoke" ]] && smoke=true
OUT=${OUT:-/tmp/issue16-out}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false FLORENZ_SHARED_DATA=$PWD/.device/data
budget=${BUDGET_S:-540}
start=$SECONDS

if $smoke; then
  PY=.venv/bin/python
  export PYTHONPATH=$PWD
  device=cpu sizes=tiny batches=2,4 steps=1 warmup=1
  compile_backend=eager  # the flag's path without C++ code generation on a shared CPU
  profile_args=(--device cpu --sizes tiny:2 --steps 1 --warmup 1 --variants eager --loss-vocab 4096)
  loader_args=(--samples 64 --batch-size 8)
  train_config=.device/train-smoke.yaml
else
  PY=python3
  export PYTHONPATH=$PWD:/tmp/issue16-site
  device=cuda sizes=${SIZES:-florenz-0.4b,florenz-3.5b} batches=${BATCHES:-128,512} steps=${STEPS:-8} warmup=2
  compile_backend=inductor
  profile_args=(--sizes florenz-0.4b:512,florenz-3.5b:256 --steps 4 --variants eager,compiled --kernels 15)
  loader_args=()
  train_config=.device/train-florenz-0.4b.yaml
fi
bench_args=(--device "$device" --sizes "$sizes" --batch-sizes "$batches" --steps "$steps" --warmup "$warmup"
            --compile "$compile_backend")
export PY OUT smoke train_config

: >"$OUT/summary.txt"
# step NAME SECONDS COMMAND...: runs COMMAND under a timeout of SECONDS (less if the budget has less left),
# output tee'd to $OUT/NAME.txt; its exit code and time go to summary.txt
step() {
  local name=$1 want=$2; shift 2
  local left=$((budget - (SECONDS - start)))
  local limit=$((want < left ? want : left))
  if ((limit < 20)); then
    echo "$name: skipped, ${left}s of the budget left" | tee -a "$OUT/summary.txt"
    return 0
  fi
  echo "=== $name (limit ${limit}s): $*" | tee "$OUT/$name.txt"
  local t0=$SECONDS rc
  timeout --kill-after=10 "$limit" "$@" 2>&1 | tee -a "$OUT/$name.txt"
  rc=${PIPESTATUS[0]}
  echo "$name: exit $rc in $((SECONDS - t0))s$( ((rc == 124)) && echo ' (timed out)')" | tee -a "$OUT/summary.txt"
}

environment() {
  date -u
  nvidia-smi || true
  nproc
  free -g || true
  df -h /dev/shm /tmp || true  # DataLoader workers hand batches over through /dev/shm
  if ! $smoke; then
    "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/issue16-site \
      .device/wheels/*.whl || return 1
  fi
  "$PY" - <<'EOF'
import torch, transformers
print(f"torch {torch.__version__} (CUDA {torch.version.cuda}), transformers {transformers.__version__}, "
      f"device {torch.cuda.get_device_name() if torch.cuda.is_available() else 'cpu'}")
# every import the steps make, before any of them runs
import pydantic, webdataset  # noqa: F401
from apache_beam.io.filesystems import FileSystems
import model.train, benchmarks.loader_throughput  # noqa: F401
from model.data import shard_urls
print(f"pydantic {pydantic.__version__}; train shards: {len(shard_urls('.device/out', 'train'))}; "
      f"FileSystems.join: {FileSystems.join('.device/out', 'train')}")
EOF
}

# florenz-train on the carried shards, then its samples/s after the first steps (loader and CUDA warm-up
# left out) next to the synthetic benchmark's rows for the same size
train_e2e() {
  local run size
  read -r run size < <("$PY" -c "import yaml, sys; c = yaml.safe_load(open(sys.argv[1]))
print(c['run']['out'], c['model']['size'])" "$train_config")
  rm -rf "$run"  # a run folder with a checkpoint would be resumed
  "$PY" -m model.train "$train_config" || return $?
  cp "$run/metrics.jsonl" "$OUT/metrics.jsonl"
  "$PY" - "$run/metrics.jsonl" "$train_config" <<'EOF'
import json, sys, yaml
rows = [r for r in map(json.loads, open(sys.argv[1])) if "elapsed_s" in r]
config = yaml.safe_load(open(sys.argv[2]))
first = next((r for r in rows if r["step"] >= 20), rows[0])  # past warm-up and the loader's start
last = rows[-1]
rate = (last["seen"] - first["seen"]) / max(1e-9, last["elapsed_s"] - first["elapsed_s"])
print(f"florenz-train {config['model']['size']} batch {config['data']['batch_size']}, "
      f"{config['data']['workers']} workers, pipeline shards: {rate:.1f} samples/s over steps "
      f"{first['step']}..{last['step']} ({last['seen'] / last['elapsed_s']:.1f} over the whole run, "
      f"{last['elapsed_s']:.1f} s); loss {rows[0]['loss']:.3f} -> {last['loss']:.3f}")
EOF
  echo "synthetic benchmark (train_throughput.txt), same size:"
  grep -E "^$size " "$OUT/train_throughput.txt" || echo "(no rows)"
}
export -f environment train_e2e

step env 120 bash -c environment
if ! grep -q "^env: exit 0" "$OUT/summary.txt"; then
  echo "the environment is not usable (env.txt): nothing else run" | tee -a "$OUT/summary.txt"
  exit 1
fi
step train_throughput 240 "$PY" benchmarks/train_throughput.py "${bench_args[@]}"
step train_profile 130 "$PY" benchmarks/train_profile.py "${profile_args[@]}"
step train_e2e 150 bash -c train_e2e
step loader_throughput 90 "$PY" benchmarks/loader_throughput.py --output .device/out "${loader_args[@]}"
echo "total $((SECONDS - start))s of ${budget}s" | tee -a "$OUT/summary.txt"
cat "$OUT/summary.txt"
