#!/usr/bin/env bash
# End-to-end GRPO on CPU through verl's real trainer: a tiny Qwen3-MoE (built from a config), single-digit
# addition, verl's agent loop + the hf_cpu rollout (bf16 or fp8 weights), the FSDP2 engine over gloo,
# rollout correction and the minirl loss. The console shows a header, one line per step and a table;
# verl's full output goes to $RUN_DIR/train.log. Everything the run writes stays under $RUN_DIR.
#
#   bash scripts/demo_cpu.sh                                       # algorithm=minirl, 3 steps
#   bash scripts/demo_cpu.sh algorithm=minirl_no_is                # any preset; Hydra overrides win
#   bash scripts/demo_cpu.sh routing_replay=R3                     # rollout returns routes, training replays them
#   STEPS=5 ROLLOUT_QUANT=fp8 bash scripts/demo_cpu.sh             # FP8 rollout weights (bigger mismatch)
#   bash scripts/demo_cpu.sh actor_rollout_ref.actor.ppo_mini_batch_size=2   # stale updates: 2 per step
#   bash scripts/demo_cpu.sh trainer.use_v1=False                  # verl's legacy trainer loop
#   bash scripts/demo_cpu.sh trainer.save_freq=1; STEPS=5 bash scripts/demo_cpu.sh trainer.save_freq=1   # resume 3 -> 5
#
# A rerun in the same RUN_DIR keeps everything: metrics.jsonl gains rows (marked run_started / resumed_from),
# train.log and hydra/ move to train.1.log and hydra.1. Ctrl-C stops the run and its Ray processes (exit 130).
# Env: RUN_DIR (default runs/cpu_demo), STEPS (3), ROLLOUT_QUANT ("" or fp8), LR (5e-3), PROMPTS per step (4,
# x group size 8), VERBOSE=1 (stream verl's full output too), PY (python, default .venv/bin/python).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
PY="${PY:-$ROOT/.venv/bin/python}"
exec "$PY" -m verl_stable.apps.demo "$@"
