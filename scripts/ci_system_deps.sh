#!/usr/bin/env bash
# System packages the tests need beyond Python: Slurm + munge (tests/slurm brings up a local Slurm) and shellcheck.
# Installs only when root, apt-get exists and something is missing; any apt failure fails loudly.
set -euo pipefail
PACKAGES=(slurm-wlm munge shellcheck)
missing=()
for pkg in "${PACKAGES[@]}"; do
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
done
if [ "${#missing[@]}" -eq 0 ]; then
    echo "[ci-deps] ${PACKAGES[*]}: installed"
    exit 0
fi
if [ "$(id -u)" -ne 0 ] || ! command -v apt-get >/dev/null 2>&1; then
    echo "[ci-deps] missing ${missing[*]} and not root with apt-get: tests that need them skip with the reason"
    exit 0
fi
echo "[ci-deps] installing ${missing[*]}"
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq || { echo "[ci-deps] apt-get update failed" >&2; exit 1; }
apt-get install -y -qq --no-install-recommends "${missing[@]}" || { echo "[ci-deps] apt-get install ${missing[*]} failed" >&2; exit 1; }
