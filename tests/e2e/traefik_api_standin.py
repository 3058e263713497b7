"""A stand-in for Traefik's read-only API, for machines where no Traefik image exists.

Used ONLY by the end-to-end tests when `traefik:v3` cannot be obtained (see DEVELOPERS.md);
where the image exists, the tests run real Traefik instead. jupyterhub-traefik-proxy does
not count a route as added until Traefik's API lists it, so without something answering
that API no server could start. This stand-in answers the five requests the hub makes,
and it answers them only from what Traefik itself would load:

- the entry points come from the rendered static configuration (proxy/traefik.yml);
- routers and services come from the dynamic configuration files in the watched
  directory (the hub's routes file and proxy/dynamic/gpuhub.yml), each checked against
  the Traefik v3 file-provider JSON Schema: a file that fails is not loaded, so its
  routes never appear and the spawn fails, as it would with Traefik;
- requests must carry the basic-auth credentials the hub wrote into that configuration.

It runs inside the hub image (Python, bcrypt, jsonschema, PyYAML are there) on the
control network, bound to the proxy's address, exactly where Traefik's API would be.

User traffic: every user server sits on a network of its own that only the hub, the
proxy (and the egress proxy) join, and that the host has no address on, so the tests
cannot reach a route's target themselves. On STANDIN_HTTP_PORT (plain HTTP, no TLS, no
WebSockets) the stand-in forwards a request to the target of the route that matches
it (longest PathPrefix, Host when the rule has one), from the proxy's place in the
network. It does not apply middlewares (no rate limits: only real Traefik shows those).
"""

import base64
import http.client
import json
import os
import re
import signal
import sys
import threading
import tomllib
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import urlparse

import bcrypt
import jsonschema
import yaml

DYNAMIC_DIR, STATIC_FILE, SCHEMA_FILE, BIND = sys.argv[1:5]
STANDIN_HTTP_PORT = 8080
HOP_BY_HOP = {"connection", "keep-alive", "proxy-connection", "transfer-encoding", "upgrade",
              "te", "trailer", "proxy-authorization", "proxy-authenticate"}
# jupyterhub-traefik-proxy keeps its own bookkeeping under this key; Traefik ignores it
JUPYTERHUB_KEY = "jupyterhub"


def load_file(path):
    with open(path, "rb") as f:
        if path.endswith(".toml"):
            return tomllib.load(f)
        return yaml.safe_load(f) or {}


def dynamic_config():
    """Merge every file Traefik's file provider would load; skip invalid ones."""
    validator = jsonschema.Draft7Validator(json.load(open(SCHEMA_FILE)))
    merged = {"routers": {}, "services": {}, "middlewares": {}}
    for name in sorted(os.listdir(DYNAMIC_DIR)):
        if not name.endswith((".toml", ".yml", ".yaml")):
            continue
        path = os.path.join(DYNAMIC_DIR, name)
        try:
            config = load_file(path)
        except (OSError, ValueError, yaml.YAMLError) as e:
            print(f"standin: cannot read {path}: {e}", flush=True)
            continue
        config.pop(JUPYTERHUB_KEY, None)
        errors = [f"{'/'.join(map(str, e.absolute_path))}: {e.message}"
                  for e in validator.iter_errors(config)]
        if errors:
            print(f"standin: {path} is not valid Traefik dynamic configuration, "
                  f"not loaded: {errors[:5]}", flush=True)
            continue
        for kind in merged:
            merged[kind].update(config.get("http", {}).get(kind, {}))
    return merged


def entrypoints():
    return set(yaml.safe_load(open(STATIC_FILE)).get("entryPoints", {}))


def authorized(header, middlewares):
    """Check basic auth against the api router's middleware, as Traefik would."""
    if not header or not header.startswith("Basic "):
        return False
    user, _, password = base64.b64decode(header[6:]).decode().partition(":")
    for middleware in middlewares.values():
        for entry in middleware.get("basicAuth", {}).get("users", []):
            name, _, hashed = entry.partition(":")
            if name == user and bcrypt.checkpw(password.encode(), hashed.encode()):
                return True
    return False


class Handler(BaseHTTPRequestHandler):
    def do_GET(self):
        config = dynamic_config()
        if not authorized(self.headers.get("Authorization"), config["middlewares"]):
            return self.reply(401, {"message": "unauthorized"})
        parts = self.path.strip("/").split("/")
        if parts == ["api", "overview"]:
            return self.reply(200, {"http": {k: {"total": len(v)} for k, v in config.items()}})
        if parts[:2] == ["api", "entrypoints"] and len(parts) == 3:
            found = parts[2] in entrypoints()
            return self.reply(200 if found else 404, {"name": parts[2]})
        if parts[:2] == ["api", "http"] and len(parts) == 4 and parts[2] in ("routers", "services"):
            name, _, provider = parts[3].partition("@")
            item = config[parts[2]].get(name) if provider == "file" else None
            return self.reply(404, {}) if item is None else self.reply(200, item)
        return self.reply(404, {"message": "not in the stand-in"})

    def reply(self, code, body):
        data = json.dumps(body).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, fmt, *args):
        print("standin:", without_query(fmt % args), flush=True)


def without_query(line):
    """A log line with every URL's query replaced by `?[query]`: a query may carry a token
    (`?token=...`), which no log keeps (issue 12; real Traefik: proxy/traefik.yml)."""
    return re.sub(r"\?[^\s\"]*", "?[query]", line)


def route_target(config, host, path):
    """The target URL of the https router that matches, as Traefik would pick it for
    gpuhub's rules (PathPrefix, optionally with Host)."""
    best = None
    for router in config["routers"].values():
        if router.get("entryPoints") != ["https"]:
            continue
        hosts = re.findall(r"Host\(`([^`]*)`\)", router["rule"])
        if hosts and host.split(":")[0].lower() not in hosts:
            continue
        for prefix in re.findall(r"PathPrefix\(`([^`]*)`\)", router["rule"]):
            if path.startswith(prefix) and (best is None or len(prefix) > len(best[0])):
                best = (prefix, router["service"])
    if best is None:
        return None
    return config["services"][best[1]]["loadBalancer"]["servers"][0]["url"]


class Forwarder(BaseHTTPRequestHandler):
    """Plain-HTTP forwarding by the routes the hub wrote (see the module docstring)."""

    def forward(self):
        target = route_target(dynamic_config(), self.headers.get("Host", ""), self.path)
        if target is None:
            return self.reply(404, b"no route")
        url = urlparse(target)
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else None
        headers = {k: v for k, v in self.headers.items() if k.lower() not in HOP_BY_HOP}
        conn = http.client.HTTPConnection(url.hostname, url.port or 80, timeout=60)
        try:
            conn.request(self.command, url.path.rstrip("/") + self.path, body, headers)
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

    do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = do_HEAD = forward

    def reply(self, code, data):
        self.send_response(code)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, fmt, *args):
        print("standin forward:", without_query(fmt % args), flush=True)


if __name__ == "__main__":
    # PID 1 in its container ignores SIGTERM unless it has a handler: `docker stop` ends it
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    host, _, port = BIND.rpartition(":")
    print(f"standin: Traefik API stand-in on {BIND}, reading {DYNAMIC_DIR}; "
          f"forwarding plain HTTP on :{STANDIN_HTTP_PORT}", flush=True)
    forwarder = ThreadingHTTPServer(("0.0.0.0", STANDIN_HTTP_PORT), Forwarder)
    threading.Thread(target=forwarder.serve_forever, daemon=True).start()
    ThreadingHTTPServer((host, int(port)), Handler).serve_forever()
