# Sourced on a lent GPU machine (no registry there): unpack the Debian packages carried in .deb/
# (tcpdump, iproute2, iperf3 and their libraries; see results/README.md) onto PATH, and bring the
# tested pytest-benchmark where the machine's is older.
X=/tmp/debs
mkdir -p "$X" && for f in .deb/*.deb; do dpkg -x "$f" "$X"; done
export PATH="$X/usr/sbin:$X/usr/bin:$X/sbin:$X/bin:$PATH"
export LD_LIBRARY_PATH="$X/usr/lib/x86_64-linux-gnu:$X/lib/x86_64-linux-gnu${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
export PYTHONUNBUFFERED=1
# pedantic(teardown=...) needs pytest-benchmark >= 5
if ! python3 -c "import pytest_benchmark, sys; sys.exit(int(pytest_benchmark.__version__.split('.')[0]) < 5)"; then
  python3 -m pip install -q --no-index --no-deps --target /tmp/site .whl/pytest_benchmark-*.whl
  export PYTHONPATH=/tmp/site
fi
