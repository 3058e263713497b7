"""No log line carries an OAuth code, state or token.

Why: JupyterHub scrubs its own access log (jupyterhub.log._scrub_uri), but tornado's
warning for an HTTP error prints the whole request URI: a refused login logs
`403 GET /hub/oauth_callback?code=...&state=...`. This filter, on the hub's log handler
(jupyterhub_config.py), rewrites every record's final text.
"""

import logging
import re

# key=value in URLs and forms, and "key": "value" in JSON, for every key that names a secret
_QUERY = re.compile(r"(?i)\b((?:[a-z_]*token[a-z_]*|code|state|_xsrf|client_secret|password)=)"
                    r"[^&\s\"'<>]+")
_JSON = re.compile(r"(?i)(['\"](?:[a-z_]*token|code|state|client_secret|password)['\"]\s*:\s*['\"])"
                   r"[^'\"]+")
_PATH = re.compile(r"(/api/authorizations/(?:token|cookie)/)[^\s/?]+")


def scrub(text):
    """`text` with the value of every secret-looking parameter replaced by [secret]."""
    text = _QUERY.sub(r"\1[secret]", text)
    text = _JSON.sub(r"\1[secret]", text)
    return _PATH.sub(r"\1[secret]", text)


class SecretsFilter(logging.Filter):
    """Rewrites each record's message (and traceback text) with `scrub`."""

    def filter(self, record):
        message = record.getMessage()
        cleaned = scrub(message)
        if cleaned != message:
            record.msg, record.args = cleaned, ()
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = scrub(record.exc_text)
        return True


# merged into traitlets' logging configuration (Application.logging_config): the filter on
# JupyterHub's one console handler, which tornado's and oauthlib's loggers also reach
LOGGING_CONFIG = {
    "filters": {"gpuhub_secrets": {"()": "hub.logscrub.SecretsFilter"}},
    "handlers": {"console": {"filters": ["gpuhub_secrets"]}},
}
