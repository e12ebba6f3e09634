#!/usr/bin/env bash
# The lent GPU's one call (issue 26). Its image has python3 with torch, lightning, transformers, peft, scipy, but no
# hydra-core / omegaconf / antlr4 and no SmolLM2 weights, and it can fetch nothing. So, here first:
#     python experiments/gpu/wheels.py --out .whl       # make device-payload: 3 pure-Python wheels + the tokenizer
# then the device tool's run with   command: bash experiments/gpu/device_run.sh   carry: [".whl"]   timeout_s: 540
# It installs the carried wheels into a temporary target (no index, no dependencies), puts src/ on the path and runs
# experiments/gpu/device_run.py, whose files land in $OUT. On a CPU:  bash experiments/gpu/device_run.sh --dry-run
set -euo pipefail
cd "$(dirname "$0")/../.."
PY=${PY:-python3}
PAYLOAD=${DEVICE_PAYLOAD:-.whl}
SITE=$(mktemp -d /tmp/device_site.XXXXXX)
if compgen -G "$PAYLOAD/*.whl" > /dev/null; then
  "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$SITE" "$PAYLOAD"/*.whl
  export PYTHONPATH="$SITE:$PWD/src${PYTHONPATH:+:$PYTHONPATH}"
else
  export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}"
fi
export HF_HUB_OFFLINE=1 WANDB_MODE=disabled PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false
exec "$PY" experiments/gpu/device_run.py "$@"
