"""Where a lab variant's start-up goes, and what sharing the held-out evaluation before training saves.

Runs ``verl-stable lab`` (one seed, two on-policy variants from the same cold start, ``--steps 1``) with verl's full
output, stamps every line with the time since the lab started, and splits each variant's run into phases read
off verl's own lines: the launcher process (its imports and config), Ray's start, verl's task runner, the worker
processes (trainer, rollout server, reward and agent-loop workers), the evaluation before training (verl's
"Initial validation metrics"), the step(s), and the teardown after the last step. The first variant evaluates
the held-out set before training; the second shares that evaluation (the lab's default since the evaluation
depends only on the weights, the held-out set and the seed), so the ratio of their times to the first step is
measured in the same run, on the same loaded or idle machine.

    .venv/bin/python benchmarks/bench_lab_startup.py                 # prints the table; the last line is JSON
    .venv/bin/python benchmarks/bench_lab_startup.py --out /tmp/bench_lab --variants minirl,minirl_no_is

The cold start is built (or reused from ``--out``/models) before the clock of either variant starts.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import time

#: (phase, the first line that ends it) in the order verl prints them; a phase runs from the previous mark
MARKS: tuple[tuple[str, str], ...] = (
    ("launcher (imports, config)", r"Platform override from VERL_PLATFORM"),
    ("Ray start", r"Started a local Ray instance"),
    ("task runner (process, dataset)", r"TaskRunner\S* pid=\d+\S* Using dataset class"),
    ("trainer and rollout-server processes", r"ready to fit"),
    ("agent-loop and reward workers", r"AgentLoopWorker\S* pid=\d+\S* Using dataset class"),
    ("evaluation before training", r"Initial validation metrics"),
)
START = re.compile(r"\[lab\] \d+/\d+ (\S+)\s+start:")
STEP1 = re.compile(r"\[lab\] \d+/\d+ (\S+)\s+step 1/")
DONE = re.compile(r"\[lab\] \d+/\d+ (\S+)\s+done:")


def phases(lines: list[tuple[float, str]], name: str) -> dict[str, float]:
    """Seconds per phase of variant ``name``'s run, from the stamped console lines."""
    start = next(t for t, line in lines if (m := START.search(line)) and m.group(1) == name)
    end = next(t for t, line in lines if (m := DONE.search(line)) and m.group(1) == name)
    mine = [(t, line) for t, line in lines if start <= t <= end]
    out, last = {}, start
    for phase, pattern in MARKS:
        hit = next((t for t, line in mine if t >= last and re.search(pattern, line)), None)
        if hit is None:
            continue
        out[phase], last = hit - last, hit
    step1 = next(t for t, line in mine if (m := STEP1.search(line)) and m.group(1) == name)
    out["step 1 (+ its evaluation)"] = step1 - last
    out["after step 1 (teardown)"] = end - step1
    out["total"] = end - start
    out["to the first step"] = step1 - start
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="runs/bench_lab_startup")
    parser.add_argument("--variants", default="minirl,minirl_no_is")
    ns = parser.parse_args(argv)
    first, second = ns.variants.split(",")
    env = {**os.environ, "RAY_DEDUP_LOGS": "1", "TOKENIZERS_PARALLELISM": "false"}
    cmd = [sys.executable, "-m", "verl_stable.lab", "--variants", ns.variants, "--seeds", "1", "--steps", "1",
           "--verbose", "--out", ns.out]  # fmt: skip
    t0 = time.monotonic()
    lines: list[tuple[float, str]] = []
    with subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env) as proc:
        for line in proc.stdout:
            lines.append((time.monotonic() - t0, line.rstrip("\n")))
    if proc.returncode != 0:
        print("\n".join(line for _, line in lines[-40:]), file=sys.stderr)
        return proc.returncode
    a, b = phases(lines, first), phases(lines, second)
    width = max(len(k) for k in a)
    print(f"{'phase':<{width}}  {first:>12}  {second:>12}")
    for key in a:
        print(f"{key:<{width}}  {a[key]:>11.1f}s  {b.get(key, 0.0):>11.1f}s")
    ratio = b["to the first step"] / a["to the first step"]
    print(f"time to the first step, {second} (shares the evaluation) / {first} (runs it): {ratio:.2f}")
    print(json.dumps({"evaluates": a, "shares": b, "ratio_to_first_step": ratio, "cpus": os.cpu_count()}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
