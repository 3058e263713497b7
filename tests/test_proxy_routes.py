"""The route guard (hub/proxy.py) against the rule jupyterhub-traefik-proxy writes: for
any text, a route is refused or its rule holds exactly the matchers of a plain prefix."""

import re
from urllib.parse import quote

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

traefik_utils = pytest.importorskip("jupyterhub_traefik_proxy.traefik_utils")

from hub import names  # noqa: E402
from hub.proxy import UnsafeRoute, check_routespec  # noqa: E402

# Traefik v3 rule syntax: matchers Name(arg, ...) with `raw` or "quoted" string arguments,
# combined with && || ! and parentheses
_TOKEN = re.compile(r"\s+|(?P<str>`[^`]*`|\"(?:[^\"\\]|\\.)*\")|(?P<op>&&|\|\||!|\(|\)|,)"
                    r"|(?P<name>[A-Za-z][A-Za-z0-9]*)")


def matchers(rule):
    """[(Name, [args])] of every matcher in `rule`; ValueError if it does not parse."""
    tokens, pos = [], 0
    while pos < len(rule):
        m = _TOKEN.match(rule, pos)
        if not m or m.end() == pos:
            raise ValueError(f"cannot tokenise {rule!r} at {pos}")
        pos = m.end()
        if m.lastgroup:
            tokens.append((m.lastgroup, m.group(m.lastgroup)))
    found, i, depth = [], 0, 0
    while i < len(tokens):
        kind, value = tokens[i]
        if kind == "name":
            if i + 1 >= len(tokens) or tokens[i + 1] != ("op", "("):
                raise ValueError(f"matcher {value} without arguments in {rule!r}")
            args, i = [], i + 2
            while i < len(tokens) and tokens[i] != ("op", ")"):
                if tokens[i][0] == "str":
                    args.append(tokens[i][1][1:-1])
                elif tokens[i] != ("op", ","):
                    raise ValueError(f"unexpected {tokens[i]} in {rule!r}")
                i += 1
            if i >= len(tokens):
                raise ValueError(f"unclosed matcher in {rule!r}")
            found.append((value, args))
        elif kind == "str":
            raise ValueError(f"string outside a matcher in {rule!r}")
        elif value == "(":
            depth += 1
        elif value == ")":
            depth -= 1
            if depth < 0:
                raise ValueError(f"unbalanced parentheses in {rule!r}")
        i += 1
    if depth:
        raise ValueError(f"unbalanced parentheses in {rule!r}")
    return found


def expected(host, path):
    plain = [("PathPrefix", [path]), ("Path", [path.rstrip("/")])]
    return ([("Host", [host])] if host else []) + plain


def routespec_for(name, host=None):
    """As JupyterHub writes it: /user/<name quoted with safe='@~'>/, with the host first in
    subdomain mode."""
    path = f"/user/{quote(name, safe='@~')}/"
    return (host + path) if host is not None else path


def test_the_parser_sees_the_injection_the_guard_stops():
    evil = "x`) || PathPrefix(`/"
    rule = traefik_utils.generate_rule(routespec_for(evil))
    assert len(matchers(rule)) > 2  # the rule now matches every path
    with pytest.raises(UnsafeRoute, match="could change the Traefik rule"):
        check_routespec(routespec_for(evil))
    with pytest.raises(UnsafeRoute, match="host"):
        check_routespec("evil`) || Host(`x/user/a/")


@pytest.mark.parametrize("spec", ["/", "/hub/", "/user/ada/", "/user/ada.lovelace@uni.example/",
                                  "ada.hub.example.edu/user/ada/", "hub.example.edu:8443/"])
def test_plain_routes_pass(spec):
    assert check_routespec(spec) == spec


@settings(max_examples=1000)
@given(st.text(), st.one_of(st.none(), st.text()))
@example("a`) || PathPrefix(`/", None)
@example("a", "x`) || Host(`y")
@example("a%60", None)
@example("a\"", None)
def test_for_any_text_the_route_is_refused_or_a_plain_prefix(name, host):
    spec = routespec_for(name, host)
    if not spec.endswith("/") or (host is not None and "/" in host):
        return
    try:
        check_routespec(spec)
    except UnsafeRoute:
        return
    decoded = traefik_utils.unquote(spec)
    h, _, rest = decoded.partition("/") if host is not None else ("", "", decoded[1:])
    assert matchers(traefik_utils.generate_rule(spec)) == expected(h, "/" + rest)


@given(st.text())
def test_names_the_pattern_allows_never_add_a_matcher(name):
    if not names.valid_username(names.normalize(name)):
        return
    normal = names.normalize(name)
    spec = routespec_for(normal)
    check_routespec(spec)
    assert matchers(traefik_utils.generate_rule(spec)) == expected("", f"/user/{normal}/")


@given(st.text())
def test_subdomain_routes_of_allowed_names_pass_and_stay_plain(name):
    """Subdomain mode (c.JupyterHub.subdomain_host): JupyterHub 5's default hook makes a
    DNS label of the name; the guard lets every allowed name's host route through."""
    from jupyterhub.utils import subdomain_hook_idna
    normal = names.normalize(name)
    if not names.valid_username(normal):
        return
    host = subdomain_hook_idna(normal, "hub.example.edu", kind="user")
    spec = routespec_for(normal, host)
    check_routespec(spec)
    assert matchers(traefik_utils.generate_rule(spec)) == expected(host, f"/user/{normal}/")
