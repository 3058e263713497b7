"""The authenticator classes AUTH_PROVIDER selects: JupyterHub's and oauthenticator's,
each with gpuhub's one form of user name (hub/names.py) and with a logout that ends the
session (hub/logout.py).

Why subclasses: JupyterHub lets configuration set `username_pattern`, but normalising a
name (NFKC) and refusing it with a page that says what is allowed need code.
"""

from secrets import compare_digest

from jupyterhub.auth import Authenticator, DummyAuthenticator
from oauthenticator.generic import GenericOAuthenticator
from oauthenticator.github import GitHubOAuthenticator
from oauthenticator.gitlab import GitLabOAuthenticator
from oauthenticator.google import GoogleOAuthenticator
from tornado import web
from traitlets import Dict, Unicode, default

from . import names
from .logout import ProviderLogoutHandler


class GpuhubAuthenticator(Authenticator):
    """One form of user name: normalised (NFKC, lower case), then the whole name checked
    against `username_pattern`; a refused name gets a page saying what is allowed. And a
    logout that ends every session (hub/logout.py)."""

    logout_handler = ProviderLogoutHandler
    lab_name = Unicode("this hub", config=True, help="""
        The lab's name in the refusal page, e.g. "Lovelace GPU Lab".""")
    provider_logout = Dict(config=True, help="""
        How a logout ends the provider's session (hub.logout.provider_logout), e.g.
        {"kind": "oidc", "end_session_endpoint": "https://sso.example.edu/logout",
         "client_id": "gpuhub", "post_logout_redirect_uri": "https://hub/hub/login"}.""")

    @default("username_pattern")
    def _default_username_pattern(self):
        return names.DEFAULT_PATTERN

    def normalize_username(self, username):
        return super().normalize_username(names.normalize(username))

    def validate_username(self, username):
        # JupyterHub's checks (no '/', not '.' or '..'), then the pattern on the WHOLE name
        return (super().validate_username(username)
                and names.valid_username(username, self.username_pattern))

    def refusal(self, name):
        return (f"The user name {name!r} cannot be used on {self.lab_name}. User names here "
                f"are {names.describe(self.username_pattern)}. Ask the hub's administrators "
                "for an account with such a name, or sign in with another account.")

    async def authenticate(self, handler, data=None):
        model = await super().authenticate(handler, data)
        name = model.get("name") if isinstance(model, dict) else model
        if name is not None and not self.validate_username(self.normalize_username(name)):
            # %r: a name may hold control characters; never let it forge log lines
            self.log.warning("Refusing login with user name %r: it does not match "
                             "GPUHUB_USERNAME_PATTERN", name)
            raise web.HTTPError(403, self.refusal(name))
        return model

    def add_user(self, user):
        # POST /hub/api/users/NAME creates users without JupyterHub's name check: here it
        # fails, and JupyterHub answers 400
        if not self.validate_username(user.name):
            raise ValueError(self.refusal(user.name))
        return super().add_user(user)


class GpuhubDummyAuthenticator(GpuhubAuthenticator, DummyAuthenticator):
    """Development login: one shared password (at least 16 characters, see hub/auth.py)."""

    async def authenticate(self, handler, data=None):
        password = (data or {}).get("password") or ""
        if not self.password or not compare_digest(password.encode(), self.password.encode()):
            return None
        return await super().authenticate(handler, data)

    def get_handlers(self, app):
        # JupyterHub's own /logout comes after the authenticator's handlers: ours wins
        return super().get_handlers(app) + [("/logout", self.logout_handler)]


class GpuhubGitHubOAuthenticator(GpuhubAuthenticator, GitHubOAuthenticator):
    pass


class GpuhubGitLabOAuthenticator(GpuhubAuthenticator, GitLabOAuthenticator):
    pass


class GpuhubGoogleOAuthenticator(GpuhubAuthenticator, GoogleOAuthenticator):
    pass


class GpuhubGenericOAuthenticator(GpuhubAuthenticator, GenericOAuthenticator):
    pass
