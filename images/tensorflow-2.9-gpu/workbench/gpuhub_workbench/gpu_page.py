"""The "My GPU" page: which GPU this server holds (name, memory), from what the hub set
at spawn (GPUHUB_GPU_NAMES, GPUHUB_GPU_MEMORY_MIB, NVIDIA_VISIBLE_DEVICES), and what
`nvidia-smi` says now where it is present. Started by jupyter-server-proxy on
127.0.0.1 when the student opens it: `python3 -m gpuhub_workbench.gpu_page PORT`."""

import html
import os
import shutil
import subprocess
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


def held_gpus(environ):
    """[(uuid, name, memory_mib or "")] for the GPUs the hub gave this server."""
    uuids = [u for u in environ.get("NVIDIA_VISIBLE_DEVICES", "").split(",")
             if u and u not in ("void", "none", "all")]
    names = environ.get("GPUHUB_GPU_NAMES", "").split(",")
    memory = environ.get("GPUHUB_GPU_MEMORY_MIB", "").split(",")
    return [(u, names[i] if i < len(names) else "", memory[i] if i < len(memory) else "")
            for i, u in enumerate(uuids)]


def nvidia_smi():
    if not shutil.which("nvidia-smi"):
        return None
    try:
        return subprocess.run(["nvidia-smi"], capture_output=True, text=True,
                              timeout=10).stdout
    except (OSError, subprocess.SubprocessError) as e:
        return f"nvidia-smi failed: {e}"


def render(environ):
    gpus = held_gpus(environ)
    if gpus:
        rows = "".join(
            f"<tr><td class='gpu-name'>{html.escape(name or 'unknown model')}</td>"
            f"<td>{html.escape(f'{int(mib) / 1024:.0f} GiB' if mib.isdigit() else '')}</td>"
            f"<td><code>{html.escape(uuid)}</code></td></tr>" for uuid, name, mib in gpus)
        body = (f"<p>This server holds {len(gpus)} GPU{'s' if len(gpus) > 1 else ''}; "
                "it is yours until the server stops.</p><table><tr><th>GPU</th>"
                f"<th>Memory</th><th>ID</th></tr>{rows}</table>")
    else:
        body = ("<p id='no-gpu'>This server has no GPU: TensorFlow runs on the CPU. "
                "Pick a GPU course on the start page for one.</p>")
    smi = nvidia_smi()
    if smi:
        body += f"<h2>nvidia-smi</h2><pre>{html.escape(smi)}</pre>"
    return ("<!doctype html><html><head><meta charset='utf-8'><title>My GPU</title>"
            "<style>body{font-family:sans-serif;margin:2em}td,th{padding:.3em 1em;"
            "text-align:left}</style></head><body><h1>My GPU</h1>" + body + "</body></html>")


class Page(BaseHTTPRequestHandler):
    def do_GET(self):
        data = render(os.environ).encode()
        self.send_response(200)
        self.send_header("Content-Type", "text/html; charset=utf-8")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args):
        pass


if __name__ == "__main__":
    ThreadingHTTPServer(("127.0.0.1", int(sys.argv[1])), Page).serve_forever()
