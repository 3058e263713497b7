"""The benchmark's way to gpuhub's user servers (benchmark only, never deployed).

Each gpuhub server sits on a Docker network of its own that the host has no address on
(hub/networks.py); only the hub, the proxy and the egress proxy join it. So the benchmark
runs this relay in the proxy container's network namespace (`docker run --network
container:<proxy>`): it reaches exactly what the proxy reaches, as Traefik would forward.

A plain-HTTP forward proxy: the host sends `GET http://<route target>/user/<name>/...`
with this relay as its HTTP proxy, and the relay makes the same request to that address,
which must lie in ALLOWED (the server subnets). It reads no configuration per request,
unlike the Traefik API stand-in's forwarder (which re-reads and schema-checks every
routes file for every request: about 10 ms of CPU each, a load of its own when a burst
polls ten times a second per user).

It listens on every network the proxy is on, so in the benchmark's stack a user server
could use it to reach other servers: fine for a stack without students, never deploy it.

    python3 relay.py PORT SUBNET
"""

import http.client
import ipaddress
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import urlsplit

PORT, ALLOWED = int(sys.argv[1]), ipaddress.ip_network(sys.argv[2])
HOP_BY_HOP = {"connection", "keep-alive", "proxy-connection", "transfer-encoding", "upgrade",
              "te", "trailer", "proxy-authorization", "proxy-authenticate"}


class Relay(BaseHTTPRequestHandler):
    def relay(self):
        url = urlsplit(self.path)
        try:
            allowed = url.scheme == "http" and ipaddress.ip_address(url.hostname) in ALLOWED
        except ValueError:
            allowed = False
        if not allowed:
            return self.reply(403, b"only http://<address in %s>" % str(ALLOWED).encode())
        headers = {k: v for k, v in self.headers.items() if k.lower() not in HOP_BY_HOP}
        conn = http.client.HTTPConnection(url.hostname, url.port or 80, timeout=10)
        try:
            conn.request(self.command, url.path + (f"?{url.query}" if url.query else ""),
                         headers=headers)
            response = conn.getresponse()
            data = response.read()
        except OSError as e:
            return self.reply(502, f"bad gateway: {e}".encode())
        finally:
            conn.close()
        self.send_response(response.status)
        for key, value in response.getheaders():
            if key.lower() not in HOP_BY_HOP | {"content-length"}:
                self.send_header(key, value)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    do_GET = do_HEAD = relay

    def reply(self, code, data):
        self.send_response(code)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, fmt, *args):
        pass  # hundreds of polls a second in a burst


if __name__ == "__main__":
    ThreadingHTTPServer(("0.0.0.0", PORT), Relay).serve_forever()
