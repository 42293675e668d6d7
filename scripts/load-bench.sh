#!/usr/bin/env bash
# The load benchmark: builds the release binary, starts it on PostgreSQL + the S3/SNS endpoint (a throwaway
# cluster and moto on 127.0.0.1, as the test suite starts them), dedup off, and measures with closed-loop
# clients (scripts/loadgen.py):
#   - the photo mix of ../shared/bench/images (in name order, in turn) at concurrency 1, 4 and 16;
#   - single photos at concurrency 1: the 4000x3000 JPEG, the 451x300 JPEG, a 12 MP phone photo held
#     upright (4032x3024 stored sideways with EXIF orientation 6 and GPS), the same photo stored upright, and
#     the same photo as HEIC and as AVIF;
#   - a burst of 32 concurrent 10 MB uploads on a fresh server: each is stored or answered 503 BUSY;
#   - a burst of 50 concurrent 15 MB uploads while 500 idle connections are held open, with one ordinary
#     upload (the 451x300 JPEG) sent meanwhile and timed;
#   - the mix at concurrency 16 again with every request traced, its spans exported over OTLP/HTTP to a
#     receiver on loopback (the other runs export nothing), for what tracing costs.
# Per run: uploads/s, p50/p99 latency, the service's CPU ms per upload (from /proc, excluding the database
# and the endpoint), its peak RSS (VmHWM), and the floor: the two models' own CPU time per upload in the same
# window (`upshot_inference_cpu_seconds`, measured on their thread) with the ratio of the CPU per upload to
# it. Bounded in time and count; loopback only.
#
#   scripts/load-bench.sh                      # about 3 minutes after the build
# Environment: LOAD_SECONDS (15) and LOAD_WARMUP (3) per level, SINGLE_SECONDS (8) per single photo,
# BENCH_IMAGES (../shared/bench/images), UPSHOT_BIN (a prebuilt binary to measure instead of building).
set -euo pipefail
cd "$(dirname "$0")/.."
repo=$(pwd)

seconds=${LOAD_SECONDS:-15}
warmup=${LOAD_WARMUP:-3}
single_seconds=${SINGLE_SECONDS:-8}
images=${BENCH_IMAGES:-$repo/../shared/bench/images}
[ -d "$images" ] || { echo "load-bench: no benchmark photos in $images (set BENCH_IMAGES)" >&2; exit 1; }
images=$(cd "$images" && pwd)

# shellcheck source=scripts/bench-setup.sh
source scripts/bench-setup.sh
"$venv/bin/python" -c 'import PIL, pillow_heif' 2>/dev/null ||
    "$venv/bin/pip" install -q --disable-pip-version-check 'pillow==11.3.0' 'pillow-heif==1.8.1' >&2
"$venv/bin/python" scripts/bench-photos.py "$images" "$state/photos"
read -r bucket topic < <("$venv/bin/python" - "$UPSHOT_TEST_AWS_ENDPOINT" <<'PY'
import sys, boto3
endpoint = sys.argv[1]
boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1").create_bucket(Bucket="upshot-bench")
arn = boto3.client("sns", endpoint_url=endpoint, region_name="us-east-1").create_topic(Name="upshot-bench")["TopicArn"]
print("upshot-bench", arn)
PY
)

port=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
# Runs export no traces unless a run asks for it (server_env).
unset OTEL_EXPORTER_OTLP_ENDPOINT OTEL_EXPORTER_OTLP_TRACES_ENDPOINT OTEL_TRACES_SAMPLER OTEL_TRACES_SAMPLER_ARG
server_env=()
start_server() {
    stop_server
    rm -rf "$state/data"
    (
        [ ${#server_env[@]} -eq 0 ] || export "${server_env[@]}"
        UPSHOT_DATA_DIR=$state/data UPSHOT_DATABASE_URL=$UPSHOT_TEST_PG_URL \
            UPSHOT_STORE=s3 UPSHOT_S3_BUCKET=$bucket UPSHOT_S3_FORCE_PATH_STYLE=true \
            UPSHOT_S3_ENDPOINT_URL=$UPSHOT_TEST_AWS_ENDPOINT UPSHOT_NOTIFIER=sns UPSHOT_SNS_TOPIC_ARN=$topic \
            UPSHOT_SNS_ENDPOINT_URL=$UPSHOT_TEST_AWS_ENDPOINT UPSHOT_DEDUP=false \
            UPSHOT_CLIENT_REQUESTS_PER_MINUTE=1000000 UPSHOT_CLIENT_REQUEST_BURST=1000000 UPSHOT_MAX_INTAKE_IN_FLIGHT_PER_CLIENT=1000000 \
            UPSHOT_MAX_CONNECTIONS_PER_CLIENT=1000000 UPSHOT_NOTIFY_MAX_PER_HOUR=0 \
            UPSHOT_SECRET_KEY=bench-secret-key-0123456789-0123456789-0123 \
            ROCKET_ADDRESS=127.0.0.1 ROCKET_PORT=$port \
            exec "$binary" serve
    ) >>"$state/server.log" 2>&1 &
    server_pid=$!
    for _ in $(seq 150); do
        curl -sf -o /dev/null "http://127.0.0.1:$port/readyz" && return 0
        kill -0 "$server_pid" 2>/dev/null || break
        sleep 0.2
    done
    tail -n 30 "$state/server.log" >&2
    echo "load-bench: the server did not become ready" >&2
    exit 1
}

results=$state/results.jsonl
load() { python3 scripts/loadgen.py --url "http://127.0.0.1:$port" --pid "$server_pid" "$@" | tee -a "$results" >&2; }

start_server
load --label mix --images "$images" --levels 1,4,16 --warmup "$warmup" --seconds "$seconds"
load --label "4000x3000 JPEG" --file "$images/astronaut_4000x3000.jpg" --levels 1 --warmup 1 --seconds "$single_seconds"
load --label "451x300 JPEG" --file "$images/chelsea.jpg" --levels 1 --warmup 1 --seconds "$single_seconds"
# Each phone photo on a fresh server, so that its peak RSS is its own.
start_server
load --label "12 MP phone photo, EXIF orientation 6" --file "$state/photos/phone-upright.jpg" --levels 1 \
    --warmup 1 --seconds "$single_seconds"
start_server
load --label "the same photo stored upright" --file "$state/photos/phone-plain.jpg" --levels 1 --warmup 1 \
    --seconds "$single_seconds"
start_server
load --label "the same photo as HEIC" --file "$state/photos/phone.heic" --levels 1 --warmup 1 \
    --seconds "$single_seconds"
start_server
load --label "the same photo as AVIF" --file "$state/photos/phone.avif" --levels 1 --warmup 1 \
    --seconds "$single_seconds"
start_server
load --label "32 x 10 MB burst" --burst "$state/photos/large-10mb.png" --clients 32
start_server
load --label "50 x 15 MB burst, 500 idle connections" --burst "$state/photos/large-15mb.png" --clients 50 \
    --idle 500 --probe "$images/chelsea.jpg"
# Every request traced, to an OTLP/HTTP receiver that takes each export and answers 200.
otlp_port=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
python3 scripts/otlp-receiver.py "$otlp_port" "$state/otlp" &
otlp_pid=$!
server_env=(OTEL_EXPORTER_OTLP_ENDPOINT="http://127.0.0.1:$otlp_port" OTEL_TRACES_SAMPLER=always_on)
start_server
load --label "mix, every request traced (OTLP)" --images "$images" --levels 16 --warmup "$warmup" --seconds "$seconds"
stop_server
kill "$otlp_pid" 2>/dev/null || true
echo "load-bench: the OTLP receiver took $(find "$state/otlp" -name '*.pb' 2>/dev/null | wc -l) export(s)" >&2

python3 - "$results" <<'PY'
import json, sys
rows = [json.loads(line) for line in open(sys.argv[1])]
print("| run | concurrency | uploads/s | p50 ms | p99 ms | CPU ms/upload | models' CPU ms/upload | CPU / models "
      "| peak RSS MB | errors |")
print("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")
for r in rows:
    if "outcomes" in r:
        outcomes = ", ".join(f"{k}: {v}" for k, v in sorted(r["outcomes"].items()))
        if "probe_status" in r:
            outcomes += f"; ordinary upload meanwhile: {r['probe_status']} in {r['probe_ms']:.0f} ms"
        print(f"| {r['label']} | {r['clients']} | | | | | | | {r['peak_rss_mb']:.0f} | {outcomes} |")
        continue
    errors = ", ".join(f"{k}: {v}" for k, v in sorted(r["errors"].items())) or "none"
    # A binary that does not export the models' CPU time (an older one, measured for comparison) has no floor.
    models = r["models_cpu_ms_per_upload"]
    floor = f"{models:.1f} | {r['cpu_ms_per_upload'] / models:.2f}" if models > 0 else "– | –"
    print(f"| {r['label']} | {r['clients']} | {r['uploads_per_s']:.1f} | {r['p50_ms']:.0f} | {r['p99_ms']:.0f} "
          f"| {r['cpu_ms_per_upload']:.1f} | {floor} | {r['peak_rss_mb']:.0f} | {errors} |")
PY
