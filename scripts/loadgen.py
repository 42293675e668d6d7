#!/usr/bin/env python3
"""Closed-loop load against a running Upshot, measured from outside and from /proc.

Each client thread keeps one keep-alive connection and sends the next photo of the mix (in name order, in
turn) as soon as its previous upload is answered. Per level it prints uploads/s, p50/p99 latency, the
service's own CPU milliseconds per upload (utime + stime of its pid over the measured window) and the
service's peak RSS (VmHWM). Stdlib only; bounded in time and count; loopback only.

    loadgen.py --url http://127.0.0.1:PORT --pid PID --images DIR --levels 1,4,16 --seconds 15
    loadgen.py ... --burst FILE --clients 32      # every client sends FILE once, at the same moment
"""
import argparse
import http.client
import json
import os
import socket
import statistics
import sys
import threading
import time
import urllib.parse

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
MAX_REQUESTS_PER_LEVEL = 100_000


def multipart(name, data):
    boundary = "upshot-load-7d41c0"
    head = (
        f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="{name}"\r\n'
        "Content-Type: application/octet-stream\r\n\r\n"
    ).encode()
    return f"multipart/form-data; boundary={boundary}", head + data + f"\r\n--{boundary}--\r\n".encode()


def cpu_ms(pid):
    fields = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) * 1000 / CLOCK_TICKS


def peak_rss_mb(pid):
    for line in open(f"/proc/{pid}/status"):
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def rss_mb(pid):
    for line in open(f"/proc/{pid}/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


class Client(threading.Thread):
    def __init__(self, url, bodies, next_index, results, stop_at, lock, route):
        super().__init__(daemon=True)
        self.url, self.bodies, self.next_index = url, bodies, next_index
        self.results, self.stop_at, self.lock, self.route = results, stop_at, lock, route

    def connect(self):
        return http.client.HTTPConnection(self.url.hostname, self.url.port, timeout=120)

    def run(self):
        conn = self.connect()
        while time.monotonic() < self.stop_at[0]:
            with self.lock:
                if len(self.results) >= MAX_REQUESTS_PER_LEVEL:
                    return
                name, (content_type, body) = self.bodies[self.next_index[0] % len(self.bodies)]
                self.next_index[0] += 1
            started = time.monotonic()
            try:
                conn.request("POST", self.route, body=body, headers={"Content-Type": content_type})
                response = conn.getresponse()
                payload = response.read()
                status = response.status
                if response.getheader("Connection", "").lower() == "close":
                    conn.close()
                    conn = self.connect()
            except (OSError, http.client.HTTPException):
                conn.close()
                conn = self.connect()
                status, payload = 0, b""
            finished = time.monotonic()
            code = None
            if status != 201:
                try:
                    code = json.loads(payload)["error"]["code"]
                except (ValueError, KeyError, TypeError):
                    code = None
            with self.lock:
                self.results.append((started, finished, status, code, name))


MODELS_CPU = "upshot_inference_cpu_seconds"


def histogram_totals(url, name):
    """The sum and count of a histogram the server exports at /metrics."""
    conn = http.client.HTTPConnection(url.hostname, url.port, timeout=10)
    conn.request("GET", "/metrics")
    text = conn.getresponse().read().decode()
    conn.close()
    totals = {}
    for line in text.splitlines():
        for part in ("sum", "count"):
            if line.startswith(f"{name}_{part} "):
                totals[part] = float(line.split()[-1])
    return totals.get("sum", 0.0), totals.get("count", 0.0)


def run_level(url, pid, bodies, clients, warmup, seconds, route):
    results, lock, next_index = [], threading.Lock(), [0]
    stop_at = [time.monotonic() + warmup + seconds]
    threads = [Client(url, bodies, next_index, results, stop_at, lock, route) for _ in range(clients)]
    for thread in threads:
        thread.start()
    time.sleep(warmup)
    window_start, cpu_start, models_start = time.monotonic(), cpu_ms(pid), histogram_totals(url, MODELS_CPU)
    time.sleep(seconds)
    window_end, cpu_end, models_end = time.monotonic(), cpu_ms(pid), histogram_totals(url, MODELS_CPU)
    for thread in threads:
        thread.join()
    measured = [r for r in results if window_start <= r[1] <= window_end]
    ok = [r for r in measured if r[2] == 201]
    latencies = sorted((r[1] - r[0]) * 1000 for r in ok)
    pick = lambda q: latencies[min(len(latencies) - 1, int(len(latencies) * q))] if latencies else float("nan")
    errors = {}
    for r in measured:
        if r[2] != 201:
            key = f"{r[2]} {r[3]}"
            errors[key] = errors.get(key, 0) + 1
    elapsed = window_end - window_start
    return {
        "clients": clients,
        "uploads": len(ok),
        "uploads_per_s": len(ok) / elapsed,
        "p50_ms": pick(0.50),
        "p99_ms": pick(0.99),
        "cpu_ms_per_upload": (cpu_end - cpu_start) / max(1, len(ok)),
        # The floor: the two models' own CPU time per image in the same window (the server measures it on
        # their thread), against which the service's CPU per upload is judged.
        "models_cpu_ms_per_upload": (models_end[0] - models_start[0]) * 1000 / max(1, models_end[1] - models_start[1]),
        "peak_rss_mb": peak_rss_mb(pid),
        "rss_mb": rss_mb(pid),
        "errors": errors,
    }


def hold_idle(url, count):
    """Opens `count` connections that send nothing, as idle or stalled clients do."""
    held = []
    for _ in range(count):
        sock = socket.create_connection((url.hostname, url.port), timeout=10)
        held.append(sock)
    return held


def probe(url, path, route, delay):
    """One ordinary upload, sent `delay` seconds into the burst: (status, milliseconds)."""
    time.sleep(delay)
    content_type, body = multipart(os.path.basename(path), open(path, "rb").read())
    conn = http.client.HTTPConnection(url.hostname, url.port, timeout=120)
    started = time.monotonic()
    try:
        conn.request("POST", route, body=body, headers={"Content-Type": content_type})
        response = conn.getresponse()
        response.read()
        status = response.status
    except (OSError, http.client.HTTPException):
        status = 0
    return status, (time.monotonic() - started) * 1000


def burst(url, pid, path, clients, route, idle=0, probe_path=None):
    """Every client sends the same large file at once; each must be stored (201) or told 503 BUSY. With `idle`,
    that many idle connections are held open meanwhile; with `probe_path`, one ordinary upload is timed."""
    data = open(path, "rb").read()
    content_type, body = multipart(os.path.basename(path), data)
    outcomes, lock, gate = [], threading.Lock(), threading.Barrier(clients)
    held = hold_idle(url, idle)
    probed = []
    if probe_path:
        prober = threading.Thread(target=lambda: probed.append(probe(url, probe_path, route, 0.5)), daemon=True)

    def send():
        conn = http.client.HTTPConnection(url.hostname, url.port, timeout=120)
        gate.wait()
        started = time.monotonic()
        try:
            conn.request("POST", route, body=body, headers={"Content-Type": content_type})
            response = conn.getresponse()
            payload, status = response.read(), response.status
        except (OSError, http.client.HTTPException) as error:
            payload, status = str(error).encode(), 0
        code = None if status == 201 else (json.loads(payload or b"{}").get("error", {}).get("code"))
        with lock:
            outcomes.append((status, code, (time.monotonic() - started) * 1000))

    threads = [threading.Thread(target=send, daemon=True) for _ in range(clients)]
    for thread in threads:
        thread.start()
    if probe_path:
        prober.start()
        prober.join(timeout=300)
    for thread in threads:
        thread.join(timeout=300)
    for sock in held:
        sock.close()
    counts = {}
    for status, code, _ in outcomes:
        key = "201 stored" if status == 201 else f"{status} {code}"
        counts[key] = counts.get(key, 0) + 1
    result = {"clients": clients, "bytes": len(data), "outcomes": counts, "peak_rss_mb": peak_rss_mb(pid)}
    if idle:
        result["idle_connections"] = idle
    if probed:
        result["probe_status"], result["probe_ms"] = probed[0]
    return result


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--url", required=True)
    parser.add_argument("--pid", type=int, required=True)
    parser.add_argument("--route", default="/api/v1/images")
    parser.add_argument("--images", help="a directory: every file in it, in name order")
    parser.add_argument("--file", action="append", default=[], help="one file (repeatable), instead of --images")
    parser.add_argument("--levels", default="1,4,16")
    parser.add_argument("--warmup", type=float, default=3)
    parser.add_argument("--seconds", type=float, default=15)
    parser.add_argument("--label", default="mix")
    parser.add_argument("--burst", help="send this file once from every client at once")
    parser.add_argument("--clients", type=int, default=32)
    parser.add_argument("--idle", type=int, default=0, help="with --burst: idle connections held open meanwhile")
    parser.add_argument("--probe", help="with --burst: one ordinary upload of this file, timed")
    args = parser.parse_args()
    url = urllib.parse.urlparse(args.url)
    if url.hostname not in ("127.0.0.1", "localhost", "::1"):
        sys.exit("loadgen: loopback targets only")
    if args.burst:
        print(json.dumps({"label": args.label, **burst(url, args.pid, args.burst, args.clients, args.route, args.idle, args.probe)}))
        return
    paths = args.file or [os.path.join(args.images, n) for n in sorted(os.listdir(args.images))]
    bodies = [(os.path.basename(p), multipart(os.path.basename(p), open(p, "rb").read())) for p in paths]
    for level in [int(c) for c in args.levels.split(",")]:
        result = run_level(url, args.pid, bodies, level, args.warmup, args.seconds, args.route)
        print(json.dumps({"label": args.label, **result}), flush=True)


if __name__ == "__main__":
    main()
