"""Jupyter server extension: tells JupyterLab when the GPU session ends.

The hub sets GPUHUB_GPU_DEADLINE (ISO 8601, UTC) and GPUHUB_GPU_WARNING (seconds) in a
GPU server's environment (hub/spawner.py get_env); this puts them in JupyterLab's page
config, where the `gpuhub-session` lab extension (labextension/) shows the countdown.
Only a display: the hub's gpu-culler enforces the deadline whatever the page says.
"""

import os

KEYS = {"GPUHUB_GPU_DEADLINE": "gpuhubGpuDeadline", "GPUHUB_GPU_WARNING": "gpuhubGpuWarning"}


def _jupyter_server_extension_points():
    return [{"module": "gpuhub_session"}]


def _load_jupyter_server_extension(serverapp):
    page_config = serverapp.web_app.settings.setdefault("page_config_data", {})
    for env, key in KEYS.items():
        if os.environ.get(env):
            page_config[key] = os.environ[env]
