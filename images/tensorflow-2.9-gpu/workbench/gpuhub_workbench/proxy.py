"""What jupyter-server-proxy may proxy in a student's server: the programs the image
names (TensorBoard, the GPU page), started on demand and reached through the student's
own server and its JupyterHub login; nothing else.

jupyter-server-proxy 4.5 always registers its generic handlers, /proxy/<port> (any port
of the container) and /proxy/<host>:<port> (any host the container reaches: the hub,
another student's server on the users network). Its `ServerProxy.host_allowlist` reaches
only the <host>:<port> handlers; /proxy/<port> and the named servers keep the built-in
["localhost", "127.0.0.1"], and no setting limits ports (jupyterhub/jupyter-server-proxy
#142, open). Every proxy handler, HTTP and websocket, asks
`ProxyHandler._check_host_allowlist` before it connects: `install` replaces that one
method so that it admits the named servers only. Everything else answers 403.
"""

import os
import shutil

NAMED_HOSTS = ("localhost", "127.0.0.1")


def named_servers_only(handler, host):
    """ServerProxy.host_allowlist: True only for a server the image names (its handler
    is a SuperviseAndProxyHandler with a fixed port), on this container."""
    from jupyter_server_proxy.handlers import SuperviseAndProxyHandler
    allowed = isinstance(handler, SuperviseAndProxyHandler) and host in NAMED_HOSTS
    if not allowed:
        handler.log.warning("server-proxy: refused %s (only TensorBoard and the GPU page "
                            "are proxied)", handler.request.path)
    return allowed


def install():
    """Called from /etc/jupyter/jupyter_server_config.py, before the extension loads."""
    from jupyter_server_proxy.handlers import ProxyHandler

    def _check_host_allowlist(self, host):
        return named_servers_only(self, host)
    ProxyHandler._check_host_allowlist = _check_host_allowlist


def icon(name):
    return os.path.join(os.path.dirname(__file__), "icons", name)


def tensorboard_logdir():
    """The student's log folder: GPUHUB_TENSORBOARD_LOGDIR, else ~/logs."""
    return os.environ.get("GPUHUB_TENSORBOARD_LOGDIR") or os.path.join(
        os.path.expanduser("~"), "logs")


def tensorboard_command(port, base_url):
    logdir = tensorboard_logdir()
    os.makedirs(logdir, exist_ok=True)
    return [shutil.which("tensorboard") or "tensorboard", f"--logdir={logdir}",
            f"--port={port}", "--host=127.0.0.1", f"--path_prefix={base_url}tensorboard",
            "--reload_interval=5"]


def servers():
    """ServerProxy.servers: each opens from a launcher card, in a new browser tab."""
    return {
        "tensorboard": {
            "command": tensorboard_command,
            # the prefix is TensorBoard's own (--path_prefix): pass the full path
            "absolute_url": True,
            # TensorFlow's import takes a while on a busy machine
            "timeout": 120,
            "launcher_entry": {"title": "TensorBoard", "icon_path": icon("tensorboard.svg"),
                               "category": "Workbench"},
        },
        "gpu": {
            "command": ["python3", "-m", "gpuhub_workbench.gpu_page", "{port}"],
            "timeout": 30,
            "launcher_entry": {"title": "My GPU", "icon_path": icon("gpu.svg"),
                               "category": "Workbench"},
        },
    }
