#!/usr/bin/env bash
# End-to-end GRPO on CPU through verl's real trainer: a tiny Qwen3-MoE (built from a config), single-digit
# addition, verl's agent loop + the hf_cpu rollout (bf16 or fp8 weights), the FSDP2 engine over gloo,
# rollout correction (token TIS, C=5) and verl's console + file loggers.
#
#   bash scripts/setup.sh && bash scripts/demo_cpu.sh                # 3 steps, default settings
#   STEPS=5 ROLLOUT_QUANT=fp8 bash scripts/demo_cpu.sh              # FP8 rollout weights (bigger mismatch)
#   bash scripts/demo_cpu.sh trainer.total_training_steps=2 ...      # extra Hydra overrides are appended
#
# Env: RUN_DIR (default runs/cpu_demo), STEPS (3), ROLLOUT_QUANT ("" or fp8), LR (5e-3), PROMPTS per step (4,
# x group size 8).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
PY="${PY:-$ROOT/.venv/bin/python}"
RUN_DIR="$(mkdir -p "${RUN_DIR:-$ROOT/runs/cpu_demo}" && cd "${RUN_DIR:-$ROOT/runs/cpu_demo}" && pwd)"
STEPS="${STEPS:-3}"
ROLLOUT_QUANT="${ROLLOUT_QUANT:-}"

# The one switch for verl's CPU backend (verl_stable/cpu): loaded in every process that imports verl.
export VERL_PLATFORM=cpu
export VERL_FILE_LOGGER_PATH="$RUN_DIR/metrics.jsonl"
export TOKENIZERS_PARALLELISM=false
export RAY_DEDUP_LOGS=0

# verl's default trainer (trainer.use_v1=true) imports transfer_queue, which verl does not declare.
if ! "$PY" -c "import transfer_queue" 2>/dev/null && [[ " $* " != *" trainer.use_v1=False "* ]]; then
    echo "[demo] verl's default trainer needs TransferQueue: $PY -m pip install 'TransferQueue>=0.1.10'" >&2
    echo "[demo] (or run the legacy loop: bash scripts/demo_cpu.sh trainer.use_v1=False)" >&2
    exit 1
fi

echo "[demo] building tiny MoE + data in $RUN_DIR"
"$PY" -m verl_stable.tasks.addition "$RUN_DIR" >/dev/null

mapfile -t OVERRIDES < <("$PY" -m verl_stable.cpu.overrides --run-dir "$RUN_DIR" --steps "$STEPS" \
    --lr "${LR:-5e-3}" --prompts-per-step "${PROMPTS:-4}" ${ROLLOUT_QUANT:+--quantization "$ROLLOUT_QUANT"})

CMD=("$PY" -m verl_stable.main algorithm=minirl)

echo "[demo] ${CMD[*]} <${#OVERRIDES[@]} CPU overrides> $*"
start=$(date +%s)
"${CMD[@]}" "${OVERRIDES[@]}" "$@" 2>&1 | tee "$RUN_DIR/train.log"
end=$(date +%s)
echo "[demo] done in $((end - start)) s"
echo "[demo] metrics (verl file logger, one JSON line per step): $VERL_FILE_LOGGER_PATH"
echo "[demo] console log: $RUN_DIR/train.log"
"$PY" -m verl_stable.cpu.overrides --summarize "$VERL_FILE_LOGGER_PATH"
