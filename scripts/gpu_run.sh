#!/usr/bin/env bash
# The suite on a lent GPU machine (no registry there): unpack the Debian packages carried in
# .deb/ (tcpdump, iproute2, iperf3 and their libraries; see results/README.md), then run the
# benchmark matrix for each model given, and pack results into $OUT/results-<model>.tgz.
#   scripts/gpu_run.sh gpt2 [llama-1b ...]      extra pytest args via GAP_ARGS
set -uo pipefail
cd "$(dirname "$0")/.."
. scripts/gpu_env.sh
OUT=${OUT:-results/gpu}
mkdir -p "$OUT"
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
python3 -c "import torch, transformers, pytest_benchmark; print('torch', torch.__version__, 'transformers', transformers.__version__, 'pytest-benchmark', pytest_benchmark.__version__, torch.cuda.get_device_name())"
for model in "$@"; do
  d="$OUT/$model"; mkdir -p "$d"
  nvidia-smi dmon -s u -d 1 > "$d/dmon-whole-run.log" 2>&1 &
  dmon=$!
  timeout -s INT "${GAP_TIMEOUT:-36000}" python3 -m pytest benchmarks -p no:xdist -p no:cacheprovider --gap-model "$model" ${GAP_ARGS:-} \
    --benchmark-json="$d/$model.json" 2>&1 | tee "$d/pytest.log" | grep -v '^\s*$' | tail -40
  kill -INT $dmon; wait $dmon 2>/dev/null
  python3 -m harness.report "$d/$model.json" --out "$d" | tail -3
  tar -czf "$OUT/results-$model.tgz" -C "$OUT" "$model" && rm -r "$d"
done
ip netns list; pgrep -af 'tcpdump|rpc_server|iperf3' || true
