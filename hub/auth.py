"""Who may log in: the authenticator chosen by AUTH_PROVIDER."""

DUMMY_WARNING = """
**********************************************************************
*  AUTH_PROVIDER=dummy: DEVELOPMENT AUTHENTICATOR. Anyone who knows  *
*  the shared password (or any password, if it is empty) can log in  *
*  as ANY user name. Never use it on a reachable host.               *
**********************************************************************"""


def configure(c, settings, log):
    c.Authenticator.admin_users = set(settings.admin_users)
    if settings.auth_provider == "dummy":
        c.JupyterHub.authenticator_class = "dummy"
        c.DummyAuthenticator.password = settings.dummy_password
        # JupyterHub 5 lets nobody in by default; this mode is explicitly "anybody".
        c.Authenticator.allow_all = True
        for line in DUMMY_WARNING.strip().splitlines():
            log.warning(line)
        return
    raise NotImplementedError(
        f"AUTH_PROVIDER={settings.auth_provider} is not wired in yet; use dummy for development"
    )
