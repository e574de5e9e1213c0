#!/usr/bin/env bash
# The main job on the bundled sample: build shards for the paper's plan from the real COCO sample in
# ../shared/data, then verify them.
#   bash scripts/run-sample.sh                                   shards from the translation store; the
#                                                                annotations it lacks are left out, counted
#   VLLM_URL=http://host:8000/v1 VLLM_MODEL=google/gemma-2-9b-it bash scripts/run-sample.sh
#                                                                translate with that server, then build
# Extra arguments go to Beam (e.g. --direct_num_workers 2 --direct_running_mode multi_processing).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
if [[ -n "${VLLM_URL:-}" ]]; then
  .venv/bin/florenz-data run configs/paper-coco-sample.yaml --endpoint "$VLLM_URL" \
    ${VLLM_MODEL:+--model "$VLLM_MODEL"} "$@"
else
  .venv/bin/florenz-data build configs/paper-coco-sample.yaml --allow-missing-translations "$@"
fi
.venv/bin/florenz-data verify out/paper-coco-sample
