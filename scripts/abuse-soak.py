#!/usr/bin/env python3
"""Hostile clients against a running `upshot serve`, with figures (loopback only, bounded in count and time).

    scripts/abuse-soak.py BASE_URL SERVER_PID SPOOL_DIR [SECONDS (20)]

Each client has a loopback address of its own (127.0.1.x, 127.0.2.x, …), as distinct addresses behind the load
balancer are. Two phases, each SECONDS long, while one well-behaved client (127.0.0.2) uploads
tests/fixtures/cat.jpg one after another:
  1. 100 WebSockets each start a 19 MiB binary message and send it at 64 KiB/s;
  2. 1,000 multipart bodies each declare 20 MiB and send 1 KiB/s.
Reported per phase: the server's peak RSS (VmHWM, from /proc), the spool directory's peak size, what the hostile
clients were answered, and the well-behaved client's uploads (count, statuses, p50 latency), beside an idle p50
measured first. Prints one JSON document. Needs root only to bind many loopback addresses (any user can on
Linux). Stops by itself.
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
URL = urllib.parse.urlsplit(BASE)
HOST, PORT = URL.hostname, URL.port
CAT = open(os.path.join(os.path.dirname(__file__), "..", "tests", "fixtures", "cat.jpg"), "rb").read()


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


async def upload_once(source):
    boundary = "soakboundary"
    body = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"cat.jpg\"\r\n"
            f"Content-Type: image/jpeg\r\n\r\n").encode() + CAT + f"\r\n--{boundary}--\r\n".encode()
    started = time.monotonic()
    reader, writer = await connect(source)
    writer.write((f"POST /api/v1/images HTTP/1.1\r\nHost: {HOST}\r\nContent-Type: multipart/form-data; "
                  f"boundary={boundary}\r\nContent-Length: {len(body)}\r\nConnection: close\r\n\r\n").encode() + body)
    await writer.drain()
    status = await read_status(reader, 30)
    writer.close()
    return status, time.monotonic() - started


async def well_behaved(until, results):
    while time.monotonic() < until:
        results.append(await upload_once("127.0.0.2"))
        await asyncio.sleep(0.2)


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
    return {
        "phase": name,
        "hostile_clients": count,
        "hostile_answers": {str(k): v for k, v in answers.items()},
        "peak_rss_mib": round(peaks["rss_kib"] / 1024, 1),
        "spool_peak_mib": round(peaks["spool_bytes"] / 2**20, 1),
        "neighbour_uploads": len(results),
        "neighbour_statuses": {str(s): sum(1 for r, _ in results if r == s) for s in {r for r, _ in results}},
        "neighbour_p50_ms": round(statistics.median(latencies) * 1000, 1) if latencies else None,
    }


async def main():
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, min(hard, 8192)), hard))
    idle = [await upload_once("127.0.0.3") for _ in range(8)]
    report = {"idle_p50_ms": round(statistics.median(t for _, t in idle) * 1000, 1),
              "rss_before_mib": round(vm_hwm_kib() / 1024, 1)}
    report["websockets"] = await phase("100 WebSockets, 19 MiB messages at 64 KiB/s", slow_websocket, 100)
    report["slow_bodies"] = await phase("1000 multipart bodies declaring 20 MiB at 1 KiB/s", slow_body, 1000)
    print(json.dumps(report, indent=1))


asyncio.run(main())
