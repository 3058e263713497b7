#!/bin/bash
# Start the user's server. Under JupyterHub (JUPYTERHUB_API_TOKEN set) it is
# jupyterhub-singleuser with the spawner's arguments; alone (an instructor trying an
# image with `docker run -p 8888:8888 IMAGE`) it is plain JupyterLab.
set -euo pipefail
if [ -n "${JUPYTERHUB_API_TOKEN:-}" ]; then
  exec jupyterhub-singleuser "$@"
fi
exec jupyter lab --ip=0.0.0.0 --port=8888 --no-browser "$@"
