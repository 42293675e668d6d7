#!/usr/bin/env bash
# The abuse benchmark: builds the release binary, starts it on PostgreSQL + the S3/SNS/SQS endpoint (a
# throwaway cluster and moto on 127.0.0.1, as the test suite starts them) with its default per-client limits,
# subscribes two SQS queues to its topic as two subscribers, and runs scripts/abuse-soak.py against it: a
# flooding client, slow WebSockets and slow bodies beside a well-behaved client, then 500 uploads within a
# minute and what each subscriber received. Prints the soak's JSON. Bounded in time and count; loopback only.
#
#   scripts/abuse-bench.sh                     # about 3 minutes after the build
# Environment: SOAK_SECONDS (20) per phase, NOTIFY_DIGEST_SECS (20: the digest interval, short so that the
# run ends soon), UPSHOT_BIN (a prebuilt binary to measure instead of building).
set -euo pipefail
cd "$(dirname "$0")/.."

# shellcheck source=scripts/bench-setup.sh
source scripts/bench-setup.sh
read -r bucket topic queues < <("$venv/bin/python" - "$UPSHOT_TEST_AWS_ENDPOINT" <<'PY'
import sys, boto3
endpoint = sys.argv[1]
boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1").create_bucket(Bucket="upshot-abuse")
sns = boto3.client("sns", endpoint_url=endpoint, region_name="us-east-1")
sqs = boto3.client("sqs", endpoint_url=endpoint, region_name="us-east-1")
arn = sns.create_topic(Name="upshot-abuse")["TopicArn"]
urls = []
for name in ("subscriber-a", "subscriber-b"):
    url = sqs.create_queue(QueueName=name)["QueueUrl"]
    queue_arn = sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
    sns.subscribe(TopicArn=arn, Protocol="sqs", Endpoint=queue_arn, Attributes={"RawMessageDelivery": "true"})
    urls.append(url)
print("upshot-abuse", arn, ",".join(urls))
PY
)

# A thousand slow bodies and a hundred WebSockets are more descriptors than the usual 1024.
ulimit -n 8192
port=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
UPSHOT_DATA_DIR=$state/data UPSHOT_DATABASE_URL=$UPSHOT_TEST_PG_URL \
    UPSHOT_STORE=s3 UPSHOT_S3_BUCKET=$bucket UPSHOT_S3_FORCE_PATH_STYLE=true \
    UPSHOT_S3_ENDPOINT_URL=$UPSHOT_TEST_AWS_ENDPOINT UPSHOT_NOTIFIER=sns UPSHOT_SNS_TOPIC_ARN=$topic \
    UPSHOT_SNS_ENDPOINT_URL=$UPSHOT_TEST_AWS_ENDPOINT UPSHOT_DEDUP=false \
    UPSHOT_NOTIFY_DIGEST_SECS=${NOTIFY_DIGEST_SECS:-20} \
    UPSHOT_SECRET_KEY=abuse-secret-key-0123456789-0123456789-0123 \
    ROCKET_ADDRESS=127.0.0.1 ROCKET_PORT=$port \
    "$binary" serve >>"$state/server.log" 2>&1 &
server_pid=$!
for _ in $(seq 150); do
    curl -sf -o /dev/null "http://127.0.0.1:$port/readyz" && break
    kill -0 "$server_pid" 2>/dev/null || { tail -n 30 "$state/server.log" >&2; exit 1; }
    sleep 0.2
done

SOAK_SQS_ENDPOINT=$UPSHOT_TEST_AWS_ENDPOINT SOAK_QUEUES=$queues \
    "$venv/bin/python" scripts/abuse-soak.py "http://127.0.0.1:$port" "$server_pid" "$state/data/spool" \
    "${SOAK_SECONDS:-20}"
