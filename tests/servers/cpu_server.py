#!/usr/bin/env python3
"""A CPU-bound HTTP server with known per-request CPU time, for cost-probe's attribution tests
(stdlib only).

GET /burn?ms=N[&...]  burns N ms of CPU on the serving thread, then answers 200 with the JSON
                      body {"cpu_ns": C}: C is the process CPU time since the previous response
                      was written, up to just before this one is: with requests one at a time,
                      all the CPU this request took (reading and parsing it, http.server's
                      header parsing being a good part of a millisecond, and the burn).
Anything else: 404.

One request at a time (a plain HTTPServer: no threads), keep-alive (HTTP/1.1). Prints
`listening PORT` on stdout once bound (PORT 0 = any free port).
"""
import json
import sys
import time
from http.server import BaseHTTPRequestHandler, HTTPServer
from urllib.parse import parse_qs, urlsplit


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    # Process CPU time when the previous response had been written (or the server started).
    last_end = time.process_time_ns()

    def do_GET(self):
        t0 = time.process_time_ns()
        url = urlsplit(self.path)
        if url.path != "/burn":
            self.send_error(404)
            return
        ms = float(parse_qs(url.query).get("ms", ["0"])[0])
        end = t0 + int(ms * 1e6)
        x = 0
        while time.process_time_ns() < end:
            for i in range(200):
                x += i * i
        body = json.dumps({"cpu_ns": time.process_time_ns() - Handler.last_end}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
        self.wfile.flush()
        Handler.last_end = time.process_time_ns()

    def log_message(self, *args):
        pass


def main():
    port = int(sys.argv[1]) if len(sys.argv) > 1 else 0
    srv = HTTPServer(("127.0.0.1", port), Handler)
    print(f"listening {srv.server_address[1]}", flush=True)
    try:
        srv.serve_forever()
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()
