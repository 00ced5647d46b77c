#!/usr/bin/env bash
# What only a GPU host can check, each part within one device call:
#   scripts/gpu_checks.sh tests              # about 5 minutes
#   scripts/gpu_checks.sh agreement [MODEL [STEPS]]  # about 8 minutes (MODEL: llama-1b, STEPS: 50)
#   scripts/gpu_checks.sh idle               # about 1 minute
# tests: the tests that skip without CUDA (the compact code against transformers in bf16, the
# batched rows' captured step, the loop running ahead for every engine, the three modes in bf16,
# a captured prompt, the pinned staging). agreement: scripts/diagnose/agreement.py, where the
# local loop's bf16 tokens part from the worker's, in and across processes. idle:
# scripts/diagnose/idle.py, an empty RPC back to back and after idle waits, with the PM QoS request,
# without it, and with busy loops on idle CPUs (SGAP_CPU_POLL=1). Logs go to $OUT.
# Carried: .deb/, .whl/ and .bundle/ (scripts/gpu_env.sh).
set -uo pipefail
cd "$(dirname "$0")/.."
. scripts/gpu_env.sh
out=${OUT:-/tmp/out}
mkdir -p "$out"
case "${1:-}" in
  tests)
    timeout -s INT 540 python3 -m pytest -p no:cacheprovider -q tests/test_compact.py tests/test_rows.py \
      tests/test_staging.py tests/test_equivalence.py -k "cuda or bf16 or ahead or captured or pinned or locked" 2>&1 \
      | tail -30 | tee "$out/gpu_tests.log" ;;
  agreement)
    timeout -s INT 560 python3 scripts/diagnose/agreement.py --model "${2:-llama-1b}" --steps "${3:-50}" --child-timeout 150 2>&1 \
      | grep -v -i warn | tee "$out/agreement.log" ;;
  idle)
    timeout -s INT 300 python3 scripts/diagnose/idle.py --link-gbps 100 2>&1 | grep -v -i warn | tee "$out/idle.log" ;;
  *)
    echo "usage: scripts/gpu_checks.sh tests | agreement [MODEL [STEPS]] | idle" >&2
    exit 2 ;;
esac
