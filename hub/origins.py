"""Where users' servers live: each on an origin of its own, or all on the hub's.

JupyterHub's security documentation: with one origin for everything, JavaScript served
from one user's server runs on the hub's origin, so it can read the XSRF token from
/hub/home and call the hub's API with the cookies of whoever opens the page (an admin
opening a student's link hands over admin rights). A student controls their own server
completely (code in ~/.local runs in it at its next start), so nothing inside the server
can stop that; only the browser's same-origin policy can.

With GPUHUB_USER_SUBDOMAINS=true (`c.JupyterHub.subdomain_host`) every server is
https://<user>.GPUHUB_DOMAIN/user/<user>/ and the hub stays on GPUHUB_DOMAIN:
jupyterhub-traefik-proxy then writes host rules, Host(`<user>.DOMAIN`) && PathPrefix(...),
and the certificate must cover *.DOMAIN (hub/tls.py, proxy/traefik.yml).

In both modes:
- `Spawner.disable_user_config`: a student's ~/.jupyter configuration is not loaded by
  their server (it could otherwise change the server's headers and handlers);
- servers send a Content-Security-Policy whose frame-ancestors admits the server itself
  (JupyterLab frames its own documents) and the hub, nobody else. It is set through the
  spawner's arguments, not in the image, so that course images get it too.
"""

import ipaddress
import json

from .settings import SettingsError


def hub_origin(s):
    """scheme://host[:port] of the hub, as browsers see it."""
    return s.public_url.rstrip("/")


def content_security_policy(s):
    # jupyterhub-singleuser's default is frame-ancestors 'none' (jupyter_server's own:
    # 'self'); jupyter_server appends "default-src 'none'" for its API and
    # "sandbox allow-scripts" for /files/ to what is set here.
    return f"frame-ancestors 'self' {hub_origin(s)}"


def server_args(s):
    """Arguments for every user server (DockerSpawner appends them to the image's
    command). The command line outranks every configuration file in the image."""
    headers = {"headers": {"Content-Security-Policy": content_security_policy(s)}}
    return [f"--ServerApp.tornado_settings={json.dumps(headers)}"]


def check(s):
    """Settings that cannot work together; raise SettingsError naming them."""
    problems = []
    if s.user_subdomains and _is_ip(s.domain):
        problems.append(f"GPUHUB_USER_SUBDOMAINS=true needs a host name in GPUHUB_DOMAIN, "
                        f"not the IP address {s.domain} (an address has no subdomains): set "
                        "GPUHUB_USER_SUBDOMAINS=false, or give the host a DNS name")
    if s.user_subdomains and s.tls_mode == "letsencrypt" and not s.acme_dns_provider:
        problems.append(
            "GPUHUB_USER_SUBDOMAINS=true with TLS_MODE=letsencrypt needs a certificate for "
            f"*.{s.domain}, which Let's Encrypt issues only through the DNS challenge: set "
            "ACME_DNS_PROVIDER and the provider's credentials (ACME_DNS_VARIABLES, "
            "docs/admin.md)")
    if problems:
        raise SettingsError(problems)


def _is_ip(host):
    try:
        ipaddress.ip_address(host)
        return True
    except ValueError:
        return False


def configure(c, s):
    c.Spawner.disable_user_config = True
    c.Spawner.args = server_args(s)
    if s.user_subdomains:
        c.JupyterHub.subdomain_host = hub_origin(s)
        # __Host- cookies cannot be set by a user's subdomain for the hub's host
        # ("cookie tossing"); JupyterHub recommends them with per-user domains only
        c.JupyterHub.cookie_host_prefix_enabled = True


def report(s, log):
    """At start-up: which mode, and a warning for the unsafe one."""
    if s.user_subdomains:
        log.info("Users' servers on their own origins: https://<user>.%s", s.domain)
    else:
        log.warning("Users' servers share the hub's origin: a page from one student's server "
                    "can act on the hub as whoever opens it. Set GPUHUB_USER_SUBDOMAINS=true "
                    "(docs/admin.md, 'Users' servers on their own origin')")
