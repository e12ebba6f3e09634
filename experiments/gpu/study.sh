#!/usr/bin/env bash
# The study's comparison at full data on one GPU: one epoch of MovieLens train (66,126 examples), LoRA K=1 and
# iLoRA K=4, SmolLM2-135M in bf16, the study's objective and prompt (conf/experiment/study.yaml), tested on LLaRA's
# protocol and the extended one. Sized for under 10 minutes on one H100/H200 (make study-gpu); writes the same
# results.json layout as the CPU study into experiments/gpu/results/.
#   bash experiments/gpu/study.sh            # on the GPU machine
#   bash experiments/gpu/study.sh --dry-run  # CPU: print the commands, run nothing (the test suite does this)
set -euo pipefail
cd "$(dirname "$0")/../.."
PY=${PY:-.venv/bin/python}
export HF_HUB_OFFLINE=1 WANDB_MODE=${WANDB_MODE:-offline}
export ILORA_STUDY_OUT=${ILORA_STUDY_OUT:-outputs/study_gpu}
exec "$PY" experiments/study/run.py --study first --datasets movielens --methods lora_k1 ilora_k4 --seeds 0 \
  --results experiments/gpu/results --precision bf16 "$@" \
  --extra trainer=gpu trainer.max_steps=-1 trainer.max_epochs=1 data.batch_size=32 data.eval_batch_size=64 \
          trainer.accumulate_grad_batches=1 trainer.val_check_interval=0.25 data.limit_val_examples=128 \
          callbacks.last_checkpoint.every_n_train_steps=200 \
  --eval-extra trainer=gpu data.eval_batch_size=64
