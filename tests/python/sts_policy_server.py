#!/usr/bin/env python3
"""An MTA-STS policy server for tests: HTTPS on ADDR:PORT with CERT and KEY, answering
GET /.well-known/mta-sts.txt with DIR/<Host header>.txt as text/plain (404 when there is
no such file). Prints `ready` once it listens.

usage: sts_policy_server.py ADDR PORT CERT KEY DIR
"""
import http.server
import os
import ssl
import sys

addr, port, cert, key, root = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4], sys.argv[5]


class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_GET(self):
        host = (self.headers.get("Host") or "").split(":")[0].lower()
        path = os.path.join(root, host + ".txt")
        if self.path != "/.well-known/mta-sts.txt" or "/" in host or not os.path.isfile(path):
            body, status = b"not found\n", 404
        else:
            with open(path, "rb") as f:
                body, status = f.read(), 200
        self.send_response(status)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


server = http.server.ThreadingHTTPServer((addr, port), Handler)
context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
context.load_cert_chain(cert, key)
server.socket = context.wrap_socket(server.socket, server_side=True)
print("ready", flush=True)
server.serve_forever()
