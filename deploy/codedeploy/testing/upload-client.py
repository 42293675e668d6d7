#!/usr/bin/env python3
"""Upload loop for scripts/rehearse-deploy.sh (loopback only, bounded).

Uploads FILE to BASE/api/v1/images until STOP_FILE exists, MAX_SECONDS pass or MAX_UPLOADS uploads were made.
Each upload carries its own Idempotency-Key; an attempt that got no HTTP response at all (connection refused or
reset while the instance restarts) is retried with the same key every 0.2 s until it gets one (so a retry can
never store the image twice). Afterwards every id that got a 201 is read back (metadata and file must be 200).
Writes a JSON report to OUT.
"""
import http.client
import json
import os
import sys
import time
import uuid
from urllib.parse import urlsplit

base, fixture, stop_file, out = sys.argv[1:5]
max_seconds, max_uploads = float(sys.argv[5]), int(sys.argv[6])
u = urlsplit(base)
data = open(fixture, "rb").read()
started = time.monotonic()
deadline = started + max_seconds


def request(method, path, body=None, headers=None):
    conn = http.client.HTTPConnection(u.hostname, u.port, timeout=30)
    try:
        conn.request(method, path, body=body, headers=headers or {})
        resp = conn.getresponse()
        return resp.status, resp.read()
    finally:
        conn.close()


def upload(key):
    boundary = uuid.uuid4().hex
    body = (
        f"--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"cat.jpg\"\r\n"
        f"Content-Type: image/jpeg\r\n\r\n".encode() + data + f"\r\n--{boundary}--\r\n".encode()
    )
    return request("POST", "/api/v1/images", body,
                   {"Content-Type": f"multipart/form-data; boundary={boundary}", "Idempotency-Key": key})


report = {"uploads": 0, "attempts": 0, "statuses": {}, "connection_errors": 0, "retried_uploads": 0,
          "unanswered_uploads": 0, "ids": [], "longest_unanswered_s": 0.0, "errors": []}
while time.monotonic() < deadline and report["uploads"] < max_uploads and not os.path.exists(stop_file):
    key = str(uuid.uuid4())
    report["uploads"] += 1
    first = time.monotonic()
    retried = False
    while True:
        report["attempts"] += 1
        try:
            status, body = upload(key)
        except (ConnectionError, http.client.HTTPException, OSError) as e:
            report["connection_errors"] += 1
            retried = True
            if time.monotonic() >= deadline + 30:
                report["unanswered_uploads"] += 1
                report["errors"].append(f"no answer for {key}: {e!r}")
                break
            time.sleep(0.2)
            continue
        report["statuses"][str(status)] = report["statuses"].get(str(status), 0) + 1
        if status == 201:
            report["ids"].append(json.loads(body)["id"])
        else:
            report["errors"].append(f"{status}: {body[:200]!r}")
        break
    if retried:
        report["retried_uploads"] += 1
        report["longest_unanswered_s"] = max(report["longest_unanswered_s"], round(time.monotonic() - first, 2))
report["upload_seconds"] = round(time.monotonic() - started, 2)

readable = 0
for image_id in report["ids"]:
    try:
        meta, _ = request("GET", f"/api/v1/images/{image_id}")
        blob, _ = request("GET", f"/api/v1/images/{image_id}/file")
    except OSError as e:
        report["errors"].append(f"read {image_id}: {e!r}")
        continue
    if meta == 200 and blob == 200:
        readable += 1
    else:
        report["errors"].append(f"read {image_id}: metadata {meta}, file {blob}")
report["readable"] = readable
report["ids"] = len(report["ids"])
json.dump(report, open(out, "w"), indent=1)
