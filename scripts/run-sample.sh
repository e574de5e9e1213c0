#!/usr/bin/env bash
# The main job on the bundled sample: build shards for the paper's plan from the real COCO sample
# in ../shared/data, then verify them. Extra arguments go to Beam (e.g. --direct_num_workers 2).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
.venv/bin/florenz-data build configs/paper-coco-sample.yaml "$@"
.venv/bin/florenz-data verify out/paper-coco-sample
