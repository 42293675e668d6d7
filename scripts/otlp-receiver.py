#!/usr/bin/env python3
"""An OTLP/HTTP receiver for the load benchmark and the deployment rehearsal: listens on 127.0.0.1:PORT, answers
every export 200 and keeps each body as OUT_DIR/<n><path>.pb (e.g. 00001_v1_traces.pb), so a script can count
the exports or look for a trace id's bytes in them.

    scripts/otlp-receiver.py PORT OUT_DIR
"""
import http.server
import os
import sys

port, out = int(sys.argv[1]), sys.argv[2]
os.makedirs(out, exist_ok=True)


class Receiver(http.server.BaseHTTPRequestHandler):
    count = 0

    def do_POST(self):
        body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
        Receiver.count += 1
        with open(os.path.join(out, f"{Receiver.count:05d}{self.path.replace('/', '_')}.pb"), "wb") as f:
            f.write(body)
        self.send_response(200)
        self.send_header("Content-Type", "application/x-protobuf")
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args):
        pass


http.server.ThreadingHTTPServer(("127.0.0.1", port), Receiver).serve_forever()
