"""The proxy: jupyterhub-traefik-proxy's file provider, refusing any route whose rule could
carry matchers of its own.

Why: jupyterhub-traefik-proxy 2.1.0 builds each router's rule by URL-decoding the
routespec and putting its host and path between backticks
(`traefik_utils.generate_rule`: ``Host(`h`) && ( PathPrefix(`/p/`) || Path(`/p`) )``), with
no escaping. A user name holding a backtick and a parenthesis (``/user/x`) || PathPrefix(`/``)
then adds a matcher that takes every request, the login and the OAuth callback included;
Traefik ranks routers by rule length. The user-name pattern (hub/names.py) already keeps
such names out; this is the second, independent guard at the sink, for host-based
(subdomain) and path-based routes alike.
"""

import re
from urllib.parse import unquote

from jupyterhub_traefik_proxy.fileprovider import TraefikFileProviderProxy

# what may stand between the backticks once generate_rule has URL-decoded the routespec:
# a lower-case host name with an optional port, and a path of unreserved characters and @
_HOST = re.compile(r"[a-z0-9]([a-z0-9.-]*[a-z0-9])?(:[0-9]{1,5})?")
_PATH = re.compile(r"/[A-Za-z0-9._~@/-]*")


class UnsafeRoute(ValueError):
    """A routespec that would not be a plain prefix inside Traefik's rule syntax."""


def check_routespec(routespec):
    """Raise UnsafeRoute unless `routespec`, decoded as generate_rule decodes it, is a
    host (optional) and a path made only of characters with no meaning in a rule."""
    decoded = unquote(routespec)
    if decoded.startswith("/"):
        host, path = "", decoded
    else:
        host, slash, path = decoded.partition("/")
        path = slash + path
        if not _HOST.fullmatch(host):
            raise UnsafeRoute(f"refusing route {routespec!r}: its host {host!r} is not a "
                              "plain host name (rule syntax such as ` ' \" ( ) is never written)")
    if not _PATH.fullmatch(path):
        bad = sorted({c for c in path if not _PATH.fullmatch("/" + c)})
        raise UnsafeRoute(f"refusing route {routespec!r}: its path has {bad!r}, which could "
                          "change the Traefik rule (` ' \" ( ) and the like are never written)")
    return routespec


class GpuhubTraefikProxy(TraefikFileProviderProxy):
    """TraefikFileProviderProxy that writes only routes `check_routespec` accepts."""

    async def add_route(self, routespec, target, data):
        check_routespec(self.validate_routespec(routespec))
        return await super().add_route(routespec, target, data)
