"""The paper's binary math reward: 1.0 when the response's final answer equals the ground truth, else 0.0.

verl takes it as a custom reward function (``reward.custom_reward_function.path=pkg://verl_stable.rewards.math_verifier``,
``name=compute_score``), for training and validation alike. Why not verl's own scorer: for ``math``, ``math_dapo``
and every ``aime*`` source, ``verl.utils.reward_score.default_compute_score`` returns ±1 (``math_dapo.compute_score``),
and with MiniRL's mean-only group advantages a {-1, 1} reward doubles the effective step size of the paper's {0, 1}.

The answer check is Hugging Face's ``math-verify`` (LaTeX / expression extraction, then a SymPy equivalence test),
not hand-written parsing. ``math-verify`` bounds its work with ``signal.alarm``, which only works in a process's
main thread, and verl calls a reward function from an executor thread: the check runs in a small pool of spawned
processes, where each call is the main thread and the library's own timeouts apply. A check that still times out
scores 0 and is counted in the ``verify_timeout`` field (verl logs it next to ``acc``), never dropped silently.
"""

from __future__ import annotations

import multiprocessing
import threading
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout

#: The data_sources this scorer is meant for (verl-stable's data step writes them; see verl_stable.data.math_sets):
#: the training set and the paper's three eval sets, each its own ``val-core/<source>/...`` metric in verl.
#: A data file with another data_source is refused before start-up (verl_stable.validation reads this tuple).
SUPPORTED_DATA_SOURCES: tuple[str, ...] = ("math", "aime24", "aime25", "hmmt25")

#: Only the end of a response is parsed: the final answer is there, and a 32K-token response of LaTeX would
#: otherwise cost seconds of SymPy per sample. 4,000 characters keep a boxed answer and the usual check after it.
TAIL_CHARS = 4000
#: math-verify's own limits (seconds) for parsing one expression and for comparing one pair.
PARSE_TIMEOUT_S = 5
VERIFY_TIMEOUT_S = 5
#: The pool's backstop for one whole check, should a SymPy call ignore the alarm.
CALL_TIMEOUT_S = 60
POOL_WORKERS = 2

_pool: ProcessPoolExecutor | None = None
_pool_lock = threading.Lock()


class GroundTruthError(ValueError):
    """A ground truth that math-verify cannot parse: a data error, reported with the row's data_source."""


def _gold_text(ground_truth: str) -> str:
    text = str(ground_truth).strip()
    return text if "\\boxed" in text else f"\\boxed{{{text}}}"


def check_answer(response: str, ground_truth: str) -> tuple[float, bool]:
    """``(score, timed_out)`` for one response, in this process (its main thread: math-verify's alarms need it).

    Raises :class:`GroundTruthError` when the ground truth itself does not parse.
    """
    from math_verify import ExprExtractionConfig, LatexExtractionConfig, parse, verify
    from math_verify.errors import TimeoutException

    try:
        # no fallback to the raw string: a ground truth must parse to an expression, or nothing can match it
        gold = parse(_gold_text(ground_truth), extraction_config=[LatexExtractionConfig()], fallback_mode="no_fallback",
                     parsing_timeout=PARSE_TIMEOUT_S)
    except TimeoutException:
        gold = []
    if not gold:
        raise GroundTruthError(f"math-verify cannot parse the ground truth {ground_truth!r}")
    try:
        # a boxed answer first (the instruction asks for one); else the last plain expression, e.g. "so it is 7"
        pred = parse(str(response)[-TAIL_CHARS:], extraction_config=[LatexExtractionConfig(), ExprExtractionConfig()],
                     parsing_timeout=PARSE_TIMEOUT_S)
        if not pred:
            return 0.0, False
        return (1.0 if verify(gold, pred, timeout_seconds=VERIFY_TIMEOUT_S) else 0.0), False
    except TimeoutException:
        return 0.0, True


def _get_pool() -> ProcessPoolExecutor:
    global _pool
    with _pool_lock:
        if _pool is None:
            # spawn, not fork: the caller is a multi-threaded Ray actor (a forked copy of its locks can deadlock)
            _pool = ProcessPoolExecutor(max_workers=POOL_WORKERS, mp_context=multiprocessing.get_context("spawn"))
        return _pool


def _reset_pool(pool: ProcessPoolExecutor) -> None:
    """Drop a pool whose worker is stuck past the backstop; the next call starts a fresh one."""
    global _pool
    with _pool_lock:
        if _pool is pool:
            _pool = None
    for proc in list(getattr(pool, "_processes", {}).values()):  # no public API kills a stuck worker
        proc.terminate()
    pool.shutdown(wait=False, cancel_futures=True)


def score(response: str, ground_truth: str) -> tuple[float, bool]:
    """:func:`check_answer` in the verifier pool (safe from any thread)."""
    pool = _get_pool()
    future = pool.submit(check_answer, response, ground_truth)
    try:
        return future.result(timeout=CALL_TIMEOUT_S)
    except FutureTimeout:
        _reset_pool(pool)
        return 0.0, True


def compute_score(data_source, solution_str, ground_truth, extra_info=None, **kwargs) -> dict:
    """verl's custom reward: ``score`` (and ``acc``) exactly 0.0 or 1.0, and ``verify_timeout`` 0.0 or 1.0."""
    if data_source not in SUPPORTED_DATA_SOURCES:
        raise ValueError(f"verl_stable.rewards.math_verifier got data_source={data_source!r}; it scores "
                         f"{', '.join(SUPPORTED_DATA_SOURCES)} (build the data with python -m verl_stable.data.math_sets)")
    try:
        value, timed_out = score(solution_str, ground_truth)
    except GroundTruthError as err:
        raise GroundTruthError(f"{err} (data_source={data_source!r}, reward_model.ground_truth of the data file)") from None
    return {"score": value, "acc": value, "verify_timeout": 1.0 if timed_out else 0.0}
