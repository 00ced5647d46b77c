# Sourced on a lent GPU machine (no registry there): unpack the Debian packages carried in .deb/
# (tcpdump, iproute2, iperf3 and their libraries) onto PATH, and put the carried wheels in .whl/
# (transformers and pytest-benchmark at requirements.txt's versions, so the GPU runs the code the
# CPU tests) ahead of the machine's own packages.
X=/tmp/debs
mkdir -p "$X" && for f in .deb/*.deb; do dpkg -x "$f" "$X"; done
export PATH="$X/usr/sbin:$X/usr/bin:$X/sbin:$X/bin:$PATH"
export LD_LIBRARY_PATH="$X/usr/lib/x86_64-linux-gnu:$X/lib/x86_64-linux-gnu${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
export PYTHONUNBUFFERED=1
if ls .whl/*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
  export PYTHONPATH=/tmp/site
fi
# The tree travels without this checkout's latest commits: a carried bundle (.bundle/repo.bundle,
# made by `git bundle create .bundle/repo.bundle HEAD`) gives the copy its commit, so that
# pytest-benchmark records the commit that ran and a clean tree
if [ -f .bundle/repo.bundle ]; then
  [ -d .git ] || git init -q
  git fetch -q .bundle/repo.bundle HEAD && git reset -q --mixed FETCH_HEAD
  echo "tree at $(git rev-parse --short HEAD), $(git status --porcelain --untracked-files=no | wc -l) tracked file(s) changed"
fi
