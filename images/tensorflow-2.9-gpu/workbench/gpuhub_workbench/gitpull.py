"""nbgitpuller's /git-pull, served only for targets `targetpath.checked_target` accepts.

nbgitpuller has no setting that confines `targetpath` (jupyterhub/nbgitpuller#330, open
in 1.3.0), so this extension registers guarded subclasses of its two handlers and then
nbgitpuller's own routes behind them: tornado takes the first route that matches. The
image disables nbgitpuller's own server extension, so nothing registers it unguarded.
"""

import os

from jupyter_server.utils import url_path_join
from tornado import web

from .targetpath import TargetPathRefused, checked_target


def requested_target(handler, sync):
    """The targetpath nbgitpuller's handler will use, computed as it does (1.3.0): the
    argument, else the repository URL's last part (a URL may end in `/.local`, and
    SyncHandler's default for one ending in `/`, or `targetpath=` given empty, is the
    home itself)."""
    repo = handler.get_argument("repo")
    if sync:  # SyncHandler.get
        return handler.get_argument("targetpath", repo.split("/")[-1])
    return (handler.get_argument("targetpath", None)  # UIHandler.get
            or handler.get_argument("targetPath", repo.rstrip("/").split("/")[-1]))


def pull_root(handler):
    return os.path.join(os.path.expanduser(handler.settings["server_root_dir"]),
                        os.getenv("NBGITPULLER_PARENTPATH", ""))


def refuse_unless_allowed(handler, sync):
    try:
        checked_target(pull_root(handler), requested_target(handler, sync))
    except TargetPathRefused as e:
        handler.log.warning("git-pull refused: %s", e)
        raise web.HTTPError(400, "This git-pull link was refused, nothing was written: %s", e)


def _jupyter_server_extension_points():
    return [{"module": "gpuhub_workbench.gitpull"}]


def _load_jupyter_server_extension(app):
    import nbgitpuller
    from nbgitpuller._compat import get_base_handler

    get_base_handler(app)  # nbgitpuller needs this before its handlers are imported
    from nbgitpuller.handlers import SyncHandler, UIHandler

    class GuardedSyncHandler(SyncHandler):
        """Clones or pulls: refused (400) before any git command for a bad targetpath."""

        @web.authenticated
        async def get(self):
            refuse_unless_allowed(self, sync=True)
            # SyncHandler reads only `targetpath`; the checked one is what it uses
            return await super().get()

    class GuardedUIHandler(UIHandler):
        """The page a git-pull link opens: says at once why a link is refused."""

        @web.authenticated
        async def get(self):
            refuse_unless_allowed(self, sync=False)
            return await super().get()

    base = url_path_join(app.web_app.settings["base_url"], "git-pull")
    app.web_app.add_handlers(".*", [(url_path_join(base, "api"), GuardedSyncHandler),
                                    (base, GuardedUIHandler)])
    nbgitpuller._load_jupyter_server_extension(app)  # its static files and old routes
    app.log.info("gpuhub: git-pull links write only to non-hidden folders in the home")


load_jupyter_server_extension = _load_jupyter_server_extension
