#!/usr/bin/env bash
# One suite run on a lent GPU machine, written where results belong:
#   scripts/gpu_run.sh NAME MODEL [pytest args ...]
# runs `pytest benchmarks --gap-model MODEL ARGS --benchmark-json=results/<card>/NAME/MODEL.json`
# (the suite refuses that path unless the tree is clean and committed), with dmon logging the whole
# run, then packs results/<card>/NAME into $OUT/NAME.tgz. Unpack it into results/<card>/ and run
# `python -m harness.report` and `python -m harness.report.catalog` on the CPU machine.
# Carried: .deb/ (tcpdump, iproute2, iperf3 and libraries), .whl/ (see scripts/gpu_env.sh).
set -uo pipefail
cd "$(dirname "$0")/.."
. scripts/gpu_env.sh
name=$1 model=$2
shift 2
card=$(nvidia-smi --query-gpu=name --format=csv,noheader | head -1 | grep -oiE 'h100|h200|a100|l40s|b200' | tr A-Z a-z)
d="results/${card:-gpu}/$name"
mkdir -p "$d"
logs=$(mktemp -d)  # the logs join the results only after the run: overwriting committed ones first
                   # would make the tree dirty, and the suite refuses to write results from a dirty tree
python3 -c "import torch, transformers, pytest_benchmark; print('torch', torch.__version__, 'transformers', transformers.__version__, 'pytest-benchmark', pytest_benchmark.__version__, torch.cuda.get_device_name())"
nvidia-smi dmon -s u -d 1 > "$logs/dmon-whole-run.log" 2>&1 &
dmon=$!
timeout -s INT "${GAP_TIMEOUT:-36000}" python3 -m pytest benchmarks -p no:xdist -p no:cacheprovider \
  --gap-model "$model" "$@" --benchmark-json="$d/$model.json" 2>&1 | tee "$logs/pytest.log" | grep -v '^\s*$' | tail -25
kill -INT $dmon; wait $dmon 2>/dev/null
mv "$logs"/* "$d/" && rmdir "$logs"
mkdir -p "${OUT:-/tmp/out}" && tar -czf "${OUT:-/tmp/out}/$name.tgz" -C "results/${card:-gpu}" "$name"
ip netns list; pgrep -af 'tcpdump|rpc_server|iperf3' || true
