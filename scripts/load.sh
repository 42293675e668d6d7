#!/usr/bin/env bash
# A small load generator for a running Upshot: N uploads of one file at concurrency C, then uploads/s and
# latency percentiles. Bounded by N; loopback or a test host only.
#
#   scripts/load.sh [BASE_URL] [N] [C] [FILE] [ROUTE]
#   scripts/load.sh http://127.0.0.1:8000 200 4 tests/fixtures/cat.jpg /api/v1/images
set -euo pipefail

base=${1:-http://127.0.0.1:8000}
count=${2:-100}
concurrency=${3:-4}
file=${4:-tests/fixtures/cat.jpg}
route=${5:-/api/v1/images}
[ "$count" -le 100000 ] || { echo "load: at most 100000 requests" >&2; exit 2; }

results=$(mktemp)
trap 'rm -f "$results"' EXIT
started=$(date +%s.%N)
seq "$count" | xargs -P "$concurrency" -I{} \
    curl -s -o /dev/null --max-time 60 -w '%{http_code} %{time_total}\n' -F "file=@$file" "$base$route" >>"$results"
finished=$(date +%s.%N)

python3 - "$results" "$count" "$concurrency" "$started" "$finished" <<'PY'
import collections, sys
path, n, c, started, finished = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), float(sys.argv[4]), float(sys.argv[5])
rows = [line.split() for line in open(path) if line.strip()]
times = sorted(float(t) * 1000 for _, t in rows)
pick = lambda q: times[min(len(times) - 1, int(len(times) * q))]
secs = finished - started
print(f"requests {n}, concurrency {c}, {secs:.1f} s, {n / secs:.1f} requests/s")
print(f"latency ms: p50 {pick(0.5):.1f}, p90 {pick(0.9):.1f}, p99 {pick(0.99):.1f}, max {times[-1]:.1f}")
for status, k in sorted(collections.Counter(s for s, _ in rows).items()):
    print(f"status {status}: {k}")
PY
