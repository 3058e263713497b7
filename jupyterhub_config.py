# gpuhub's JupyterHub configuration: thin on purpose. Settings come from the
# environment (.env, through compose) and are checked and applied by the `hub` package.
import glob
import os

from hub.config import apply
from hub.logscrub import LOGGING_CONFIG

c = get_config()  # noqa: F821 (provided by JupyterHub)

# structured logs are easier to read in `docker compose logs`
c.JupyterHub.log_datefmt = "%Y-%m-%d %H:%M:%S"
# no OAuth code, state or token in any log line (tornado's error warnings print whole URIs)
c.JupyterHub.logging_config = LOGGING_CONFIG

apply(c)

# Escape hatch: every jupyterhub_config.d/*.py, in sorted order, may change anything above.
here = os.path.dirname(os.path.abspath(__file__))
for path in sorted(glob.glob(os.path.join(here, "jupyterhub_config.d", "*.py"))):
    load_subconfig(path)  # noqa: F821 (provided by traitlets)
