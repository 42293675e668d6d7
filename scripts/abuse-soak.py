#!/usr/bin/env python3
"""Hostile clients against a running `upshot serve`, with figures (loopback only, bounded in count and time).

    scripts/abuse-soak.py BASE_URL SERVER_PID SPOOL_DIR [SECONDS (20)]

Each client has a loopback address of its own (127.0.1.x, 127.0.2.x, …), as distinct addresses behind the load
balancer are. Three phases, each SECONDS long, while one well-behaved client (127.0.0.2) uploads
tests/fixtures/cat.jpg one after another:
  1. one client (127.0.0.4) floods small uploads on 4 connections at once, as fast as it is answered;
  2. 100 WebSockets each start a 19 MiB binary message and send it at 64 KiB/s;
  3. 1,000 multipart bodies each declare 20 MiB and send 1 KiB/s.
Reported per phase: the server's peak RSS (VmHWM, from /proc), the spool directory's peak size, what the hostile
clients were answered, and the well-behaved client's uploads (count, statuses, p50 latency and its ratio to an
idle p50 measured first).

With SOAK_SQS_ENDPOINT and SOAK_QUEUES (comma-separated SQS queue URLs, each subscribed to the server's topic
with raw delivery; needs boto3), a fourth phase: 500 uploads within a minute from 25 clients, then, once the
server's notifications have drained (SOAK_DRAIN_SECONDS, 90), how many messages each subscriber got, how many
were digests, and whether every uploaded image is in some message.

Prints one JSON document. Any user can bind loopback addresses on Linux. Stops by itself.
"""
import asyncio
import base64
import json
import os
import resource
import statistics
import sys
import time
import urllib.parse

BASE, PID, SPOOL = sys.argv[1], int(sys.argv[2]), sys.argv[3]
SECONDS = float(sys.argv[4]) if len(sys.argv) > 4 else 20.0
IDLE_P50 = None
URL = urllib.parse.urlsplit(BASE)
HOST, PORT = URL.hostname, URL.port
FIXTURES = os.path.join(os.path.dirname(__file__), "..", "tests", "fixtures")
CAT = open(os.path.join(FIXTURES, "cat.jpg"), "rb").read()
PIXEL = open(os.path.join(FIXTURES, "logo-alpha.png"), "rb").read()


def vm_hwm_kib():
    for line in open(f"/proc/{PID}/status"):
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    return 0


def spool_bytes():
    total = 0
    for top, _, names in os.walk(SPOOL):
        for name in names:
            try:
                total += os.path.getsize(os.path.join(top, name))
            except OSError:
                pass
    return total


async def connect(source):
    return await asyncio.open_connection(HOST, PORT, local_addr=(source, 0))


async def read_status(reader, timeout):
    try:
        line = await asyncio.wait_for(reader.readline(), timeout)
        return int(line.split()[1]) if line.startswith(b"HTTP/") else 0
    except (asyncio.TimeoutError, ConnectionError, IndexError, ValueError):
        return 0


def upload_request(image):
    """A multipart upload of `image` as one request with `Connection: close`."""
    boundary = "soakboundary"
    body = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"cat.jpg\"\r\n"
            f"Content-Type: image/jpeg\r\n\r\n").encode() + image + f"\r\n--{boundary}--\r\n".encode()
    return (f"POST /api/v1/images HTTP/1.1\r\nHost: {HOST}\r\nContent-Type: multipart/form-data; "
            f"boundary={boundary}\r\nContent-Length: {len(body)}\r\nConnection: close\r\n\r\n").encode() + body


async def upload_once(source, image=None):
    """One upload of `image` (cat.jpg by default) from `source`: its status (0 for none) and seconds taken."""
    started = time.monotonic()
    reader, writer = await connect(source)
    writer.write(upload_request(image or CAT))
    await writer.drain()
    status = await read_status(reader, 30)
    writer.close()
    return status, time.monotonic() - started


async def upload_for_id(source):
    """Uploads cat.jpg from `source` and returns the new image's id (None when it was not stored)."""
    reader, writer = await connect(source)
    writer.write(upload_request(CAT))
    await writer.drain()
    answer = await asyncio.wait_for(reader.read(), 60)
    writer.close()
    head, _, payload = answer.partition(b"\r\n\r\n")
    if not head.startswith(b"HTTP/1.1 201"):
        return None
    return json.loads(payload)["id"]


async def well_behaved(until, results):
    while time.monotonic() < until:
        results.append(await upload_once("127.0.0.2"))
        # Within the default allowance (60 a minute): a person or a script that keeps to the rules.
        await asyncio.sleep(1.1)


async def flood(index, until, answers):
    """One of the flooding client's connections: small uploads back to back."""
    while time.monotonic() < until:
        status, _ = await upload_once("127.0.0.4", PIXEL)
        answers[status] = answers.get(status, 0) + 1
        if status == 0:
            await asyncio.sleep(0.05)


async def slow_websocket(index, until, answers):
    source = f"127.0.{1 + index // 250}.{1 + index % 250}"
    try:
        reader, writer = await connect(source)
        key = base64.b64encode(os.urandom(16)).decode()
        writer.write((f"GET /api/v1/ws HTTP/1.1\r\nHost: {HOST}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                      f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n").encode())
        await writer.drain()
        status = await read_status(reader, 10)
        answers[status] = answers.get(status, 0) + 1
        if status != 101:
            writer.close()
            return
        length = 19 << 20
        mask = os.urandom(4)
        header = bytes([0x82, 0x80 | 127]) + length.to_bytes(8, "big") + mask
        writer.write(header)
        chunk = bytes(64 << 10)
        while time.monotonic() < until:
            writer.write(chunk)
            await writer.drain()
            await asyncio.sleep(1)
        writer.close()
    except (ConnectionError, OSError):
        answers["reset"] = answers.get("reset", 0) + 1


async def slow_body(index, until, answers):
    source = f"127.0.{10 + index // 250}.{1 + index % 250}"
    try:
        reader, writer = await connect(source)
        writer.write((f"POST /api/v1/images HTTP/1.1\r\nHost: {HOST}\r\nContent-Type: multipart/form-data; "
                      f"boundary=b\r\nContent-Length: {20 << 20}\r\n\r\n--b\r\nContent-Disposition: form-data; "
                      f"name=\"file\"; filename=\"x.jpg\"\r\n\r\n").encode())
        await writer.drain()
        while time.monotonic() < until:
            writer.write(bytes(1024))
            await writer.drain()
            try:
                status = await asyncio.wait_for(read_status(reader, 1), 1)
            except asyncio.TimeoutError:
                status = 0
            if status:
                answers[status] = answers.get(status, 0) + 1
                writer.close()
                return
        answers["still sending"] = answers.get("still sending", 0) + 1
        writer.close()
    except (ConnectionError, OSError):
        answers["reset"] = answers.get("reset", 0) + 1


async def phase(name, attacker, count):
    until = time.monotonic() + SECONDS
    answers, results = {}, []
    peaks = {"rss_kib": 0, "spool_bytes": 0}

    async def sample():
        while time.monotonic() < until + 2:
            peaks["rss_kib"] = max(peaks["rss_kib"], vm_hwm_kib())
            peaks["spool_bytes"] = max(peaks["spool_bytes"], spool_bytes())
            await asyncio.sleep(0.25)

    await asyncio.gather(sample(), well_behaved(until, results), *(attacker(i, until, answers) for i in range(count)))
    latencies = [t for s, t in results if s == 201]
    p50 = statistics.median(latencies) if latencies else None
    return {
        "phase": name,
        "hostile_clients": count,
        "hostile_answers": {str(k): v for k, v in answers.items()},
        "peak_rss_mib": round(peaks["rss_kib"] / 1024, 1),
        "spool_peak_mib": round(peaks["spool_bytes"] / 2**20, 1),
        "neighbour_uploads": len(results),
        "neighbour_statuses": {str(s): sum(1 for r, _ in results if r == s) for s in {r for r, _ in results}},
        "neighbour_p50_ms": round(p50 * 1000, 1) if p50 else None,
        "neighbour_p50_over_idle": round(p50 / IDLE_P50, 2) if p50 else None,
    }


async def notification_flood(endpoint, queue_urls):
    """500 uploads within a minute from 25 clients (20 each, within their allowance), then what each subscriber
    received once the server's outbox has drained."""
    import boto3
    sqs = boto3.client("sqs", endpoint_url=endpoint, region_name=os.environ.get("AWS_REGION", "us-east-1"))
    started = time.monotonic()

    async def client(index):
        return [await upload_for_id(f"127.0.30.{1 + index}") for _ in range(20)]

    ids = {i for batch in await asyncio.gather(*(client(i) for i in range(25))) for i in batch if i}
    uploads_secs = time.monotonic() - started
    drain_until = time.monotonic() + float(os.environ.get("SOAK_DRAIN_SECONDS", "90"))
    subscribers = [{"url": url, "seen": set(), "messages": 0, "digests": 0} for url in queue_urls]
    quiet_since = time.monotonic()
    while time.monotonic() < drain_until and (
            any(s["seen"] != ids for s in subscribers) or time.monotonic() - quiet_since < 5):
        for subscriber in subscribers:
            got = sqs.receive_message(QueueUrl=subscriber["url"], MaxNumberOfMessages=10, WaitTimeSeconds=1,
                                      MessageAttributeNames=["All"]).get("Messages", [])
            if got:
                quiet_since = time.monotonic()
            for message in got:
                subscriber["messages"] += 1
                attributes = {k: v.get("StringValue") for k, v in message.get("MessageAttributes", {}).items()}
                if attributes.get("event_type") == "image.digest":
                    subscriber["digests"] += 1
                    subscriber["seen"].update(json.loads(message["Body"])["image_ids"])
                else:
                    subscriber["seen"].add(attributes.get("image_id"))
                sqs.delete_message(QueueUrl=subscriber["url"], ReceiptHandle=message["ReceiptHandle"])
    subscribers = [{"messages": s["messages"], "digests": s["digests"], "images_covered": len(s["seen"] & ids),
                    "every_image_in_some_message": ids <= s["seen"]} for s in subscribers]
    return {"phase": "500 uploads within a minute from 25 clients, two subscribers",
            "uploads_stored": len(ids), "uploads_seconds": round(uploads_secs, 1),
            "seconds_until_drained": round(time.monotonic() - started, 1), "subscribers": subscribers}


async def main():
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, min(hard, 8192)), hard))
    global IDLE_P50
    idle = [await upload_once("127.0.0.3") for _ in range(8)]
    IDLE_P50 = statistics.median(t for _, t in idle)
    report = {"idle_p50_ms": round(IDLE_P50 * 1000, 1), "rss_before_mib": round(vm_hwm_kib() / 1024, 1)}
    report["flood"] = await phase("one client flooding small uploads on 4 connections", flood, 4)
    report["websockets"] = await phase("100 WebSockets, 19 MiB messages at 64 KiB/s", slow_websocket, 100)
    report["slow_bodies"] = await phase("1000 multipart bodies declaring 20 MiB at 1 KiB/s", slow_body, 1000)
    if os.environ.get("SOAK_QUEUES"):
        queues = os.environ["SOAK_QUEUES"].split(",")
        report["notifications"] = await notification_flood(os.environ["SOAK_SQS_ENDPOINT"], queues)
    print(json.dumps(report, indent=1))


asyncio.run(main())
