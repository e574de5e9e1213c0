#!/usr/bin/env bash
# Issue 16's GPU run, prepared here (no GPU needed): everything it needs that the GPU machine lacks goes
# into .device/ (ignored by git; < 50 MiB, so that it travels with the working tree under the 64 MiB):
#   .device/wheels/  the packages its python3 lacks (scripts/device/wheels.txt), cp312 manylinux x86_64
#   .device/out, .device/tokenizers, .device/data, .device/*.yaml  (scripts/device/prepare_data.py)
# Then, on the lent GPU, one call of the device tool's run:
#   command: bash scripts/device/issue16.sh   carry: [".device"]   timeout_s: 600
# Test the device script's logic here first: bash scripts/device/issue16.sh --cpu-smoke
#   IMAGES=32  COCO sample images in the carried output
set -euo pipefail
cd "$(dirname "$0")/../.."
DEST=.device
PY=.venv/bin/python
"$PY" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
  --platform manylinux2014_x86_64 --platform manylinux1_x86_64 \
  -d "$DEST/wheels.new" -r scripts/device/wheels.txt
rm -rf "$DEST/wheels" && mkdir -p "$DEST" && mv "$DEST/wheels.new" "$DEST/wheels"
# offline, as the machine installs them: every pin has a cp312 x86_64 wheel here, and pydantic's closure
# (all carried) resolves; the rest's imports are checked on the machine before anything runs (issue16.sh)
dry_run() {
  "$PY" -m pip install -q --dry-run --no-index --find-links "$DEST/wheels" --only-binary=:all: --python-version 3.12 \
    --implementation cp --platform manylinux_2_28_x86_64 --platform manylinux2014_x86_64 --target /tmp/issue16-dry-run "$@"
}
dry_run --no-deps -r scripts/device/wheels.txt
dry_run "$(grep ^pydantic== scripts/device/wheels.txt)"
PYTHONPATH=$PWD "$PY" scripts/device/prepare_data.py "$DEST" --images "${IMAGES:-32}"
find "$DEST" -name __pycache__ -prune -exec rm -rf {} +
du -sh "$DEST"/* "$DEST"
size=$(du -sm "$DEST" | cut -f1)
if (( size >= 50 )); then echo "[prepare] $DEST is ${size} MiB: over the 50 MiB it may take" >&2; exit 1; fi
echo "[prepare] $DEST: ${size} MiB; on the GPU: run command 'bash scripts/device/issue16.sh', carry ['.device']"
