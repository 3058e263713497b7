"""Logout that ends the session: in the hub, server-side, and at the provider where the
provider allows it.

Why: JupyterHub 5.5's LogoutHandler clears the browser's cookies and deletes the API
tokens of that one browser session, but the hub cookie itself stays valid (it names the
user's `cookie_id`, which logout leaves as it is): a copied cookie keeps working. And the
provider's own session stays open, so on a shared lab PC *Sign in* lets the next person in
as the previous student without a password.
"""

from urllib.parse import urlencode

from jupyterhub import orm
from jupyterhub.handlers import LogoutHandler
from jupyterhub.utils import new_token

STATE_COOKIE_NAME = "oauthenticator-state"  # oauthenticator.oauth2.STATE_COOKIE_NAME

# Providers that do not let another site end their session: the page says so and links
# to where the student signs out.
SIGN_OUT_THERE = {
    "github": ("GitHub", "https://github.com/logout"),
    "google": ("Google", "https://accounts.google.com/Logout"),
}


def end_hub_sessions(db, orm_user):
    """Every browser session of the user ends: a new cookie_id (so no earlier hub cookie
    names the user any more) and the sessions' tokens, e.g. those the user's server got
    through OAuth, deleted. Tokens the user made on the token page are kept. Returns the
    number of tokens deleted."""
    orm_user.cookie_id = new_token()
    count = 0
    for token in db.query(orm.APIToken).filter(orm.APIToken.user_id == orm_user.id,
                                               orm.APIToken.session_id.isnot(None)):
        db.delete(token)
        count += 1
    db.commit()
    return count


def provider_logout(provider, end_session_endpoint=None, client_id="", login_url="",
                    gitlab_url=""):
    """The `provider_logout` setting of an authenticator (see `logout_target`)."""
    if provider == "oidc" and end_session_endpoint:
        return {"kind": "oidc", "end_session_endpoint": end_session_endpoint,
                "client_id": client_id, "post_logout_redirect_uri": login_url}
    if provider == "gitlab":
        # GitLab has no endpoint that ends its browser session for another site (its OpenID
        # metadata lists no end_session_endpoint): the student signs out there
        return {"kind": "elsewhere", "name": "GitLab", "url": gitlab_url.rstrip("/") + "/"}
    if provider in SIGN_OUT_THERE:
        name, url = SIGN_OUT_THERE[provider]
        return {"kind": "elsewhere", "name": name, "url": url}
    return {}


def logout_target(config, id_token=None):
    """Where the browser goes after the hub's logout: ("redirect", url) to the provider's
    end-session endpoint, ("page", name, url) for the page that says to sign out at the
    provider, or None for the login page."""
    kind = config.get("kind")
    if kind == "oidc":
        # RP-initiated logout 1.0: id_token_hint when we have it (a refused student has
        # none), client_id always, so the provider accepts the redirect back to the hub
        params = {"client_id": config["client_id"],
                  "post_logout_redirect_uri": config["post_logout_redirect_uri"]}
        if id_token:
            params["id_token_hint"] = id_token
        endpoint = config["end_session_endpoint"]
        return ("redirect", endpoint + ("&" if "?" in endpoint else "?") + urlencode(params))
    if kind == "elsewhere":
        return ("page", config["name"], config["url"])
    return None


class ProviderLogoutHandler(LogoutHandler):
    """/hub/logout: the hub's logout, then the server-side end of every session of the
    user, then the provider's end of it (`logout_target`)."""

    async def default_handle_logout(self):
        user = self.current_user
        self._id_token = None
        if user:
            state = await user.get_auth_state() or {}
            self._id_token = state.get("id_token")
        await super().default_handle_logout()  # cookies and this session's tokens
        if user:
            deleted = end_hub_sessions(self.db, user.orm_user)
            self.log.info("Ended every session of %s (%s tokens revoked)", user.name, deleted)

    async def handle_logout(self):
        self.clear_cookie(STATE_COOKIE_NAME)

    async def render_logout_page(self):
        config = getattr(self.authenticator, "provider_logout", None) or {}
        target = logout_target(config, self._id_token)
        if target and target[0] == "redirect":
            self.redirect(target[1])
        elif target:
            _, name, url = target
            html = await self.render_template("logout.html", gpuhub_provider_name=name,
                                              gpuhub_provider_url=url)
            self.finish(html)
        else:
            self.redirect(self.settings["login_url"], permanent=False)
