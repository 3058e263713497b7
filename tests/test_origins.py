"""Users' servers on their own origin: the settings, the hub configuration, and the
certificates that must cover *.GPUHUB_DOMAIN (generated and the admin's own)."""

import datetime
import json
import logging
import shlex

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from traitlets.config import Config

from hub import config, origins, settings, tls

BASE = {"GPUHUB_DOMAIN": "hub.lab.edu", "AUTH_PROVIDER": "dummy",
        "GPUHUB_DUMMY_PASSWORD": "a-development-password",
        "GPUHUB_USER_IMAGE": "gpuhub/tensorflow-2.9-gpu:1"}
LOG = logging.getLogger("test")


def san_of(path):
    cert = x509.load_pem_x509_certificate(open(path, "rb").read())
    return cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value


def own_certificate(own, names):
    """An admin's certificate naming `names` (DNS names), as tls/cert.pem + tls/key.pem."""
    own.mkdir(exist_ok=True)
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.timezone.utc)
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, names[0])])
    cert = (x509.CertificateBuilder().subject_name(subject).issuer_name(subject)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(days=1))
            .not_valid_after(now + datetime.timedelta(days=90))
            .add_extension(x509.SubjectAlternativeName([x509.DNSName(n) for n in names]),
                           critical=False)
            .sign(key, hashes.SHA256()))
    from cryptography.hazmat.primitives import serialization
    (own / "cert.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    (own / "key.pem").write_bytes(key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption()))


# -- settings and hub configuration --

def test_subdomain_mode_is_the_default_and_the_example_ships_it():
    assert settings.load(BASE).user_subdomains is True
    assert settings.load({**BASE, "GPUHUB_USER_SUBDOMAINS": "false"}).user_subdomains is False
    example = dict(line.split("=", 1) for line in open(".env.example").read().splitlines()
                   if line and not line.startswith("#"))
    assert example["GPUHUB_USER_SUBDOMAINS"] == "true", "the shipped .env is the safe mode"


@pytest.mark.parametrize("env, message", [
    ({"GPUHUB_DOMAIN": "192.168.1.20"},
     "GPUHUB_USER_SUBDOMAINS=true needs a host name in GPUHUB_DOMAIN, not the IP address 192.168.1.20"),
    ({"TLS_MODE": "letsencrypt"},
     "GPUHUB_USER_SUBDOMAINS=true with TLS_MODE=letsencrypt needs a certificate for "
     "*.hub.lab.edu, which Let's Encrypt issues only through the DNS challenge: set ACME_DNS_PROVIDER"),
], ids=["ip-address", "letsencrypt-without-dns-challenge"])
def test_subdomain_mode_refuses_what_cannot_work(env, message):
    s = settings.load({**BASE, "GPUHUB_USER_SUBDOMAINS": "true", **env})
    with pytest.raises(settings.SettingsError) as e:
        origins.check(s)
    assert message in str(e.value)


def test_letsencrypt_with_a_dns_provider_may_have_subdomains():
    origins.check(settings.load({**BASE, "GPUHUB_USER_SUBDOMAINS": "true",
                                 "TLS_MODE": "letsencrypt", "ACME_DNS_PROVIDER": "cloudflare"}))


def apply(tmp_path, **env):
    c = Config()
    config.apply(c, {**BASE, "GPUHUB_STATE_DIR": str(tmp_path / "state"),
                     "GPUHUB_TLS_DIR": str(tmp_path / "tls"), "GPUHUB_HTTPS_PORT": "8443", **env})
    return c


def server_headers(c):
    """The headers a user server gets from its command line, parsed as traitlets does."""
    [arg] = c.Spawner.args
    name, _, value = arg.partition("=")
    assert name == "--ServerApp.tornado_settings"
    return json.loads(value)["headers"]


def test_subdomain_mode_puts_servers_on_their_own_origin(tmp_path):
    c = apply(tmp_path, GPUHUB_USER_SUBDOMAINS="true")
    assert c.JupyterHub.subdomain_host == "https://hub.lab.edu:8443"
    assert c.JupyterHub.cookie_host_prefix_enabled is True
    assert c.Spawner.disable_user_config is True
    assert server_headers(c) == {
        "Content-Security-Policy": "frame-ancestors 'self' https://hub.lab.edu:8443"}
    # the certificate the proxy serves covers the hub and every user's subdomain
    names = san_of(tmp_path / "tls" / "tls.crt").get_values_for_type(x509.DNSName)
    assert names == ["hub.lab.edu", "*.hub.lab.edu"]


def test_single_origin_mode_still_disables_user_config_and_limits_framing(tmp_path, caplog):
    with caplog.at_level(logging.WARNING):
        c = apply(tmp_path, GPUHUB_USER_SUBDOMAINS="false")
    assert "subdomain_host" not in c.JupyterHub
    assert c.Spawner.disable_user_config is True
    assert server_headers(c)["Content-Security-Policy"] == "frame-ancestors 'self' https://hub.lab.edu:8443"
    assert "Users' servers share the hub's origin" in caplog.text


def test_server_args_survive_a_shell_and_traitlets():
    """DockerSpawner passes the arguments as a list (no shell); the value is also fine
    for an instructor pasting it into a shell."""
    from traitlets import Dict
    from traitlets.config import Application

    class ServerApp(Application):
        tornado_settings = Dict(config=True)

    s = settings.load({**BASE, "GPUHUB_USER_SUBDOMAINS": "true"})
    app = ServerApp()
    app.parse_command_line(shlex.split(shlex.join(origins.server_args(s))))
    assert app.config.ServerApp.tornado_settings == {
        "headers": {"Content-Security-Policy": "frame-ancestors 'self' https://hub.lab.edu"}}


# -- certificates --

def test_generated_certificate_covers_the_wildcard_in_subdomain_mode(tmp_path):
    cert, _ = tls.prepare("selfsigned", "hub.lab.edu", str(tmp_path), "", LOG, wildcard=True)
    assert san_of(cert).get_values_for_type(x509.DNSName) == ["hub.lab.edu", "*.hub.lab.edu"]
    parsed = x509.load_pem_x509_certificate(open(cert, "rb").read())
    assert tls.missing_names(parsed, ["ada.hub.lab.edu", "hub.lab.edu"]) == []
    # one label only, as browsers match wildcards
    assert tls.missing_names(parsed, ["a.b.hub.lab.edu", "lab.edu"]) == ["a.b.hub.lab.edu", "lab.edu"]


def test_a_certificate_without_the_wildcard_is_replaced_when_subdomains_are_turned_on(tmp_path):
    cert, _ = tls.prepare("selfsigned", "hub.lab.edu", str(tmp_path), "", LOG)
    first = open(cert, "rb").read()
    assert san_of(cert).get_values_for_type(x509.DNSName) == ["hub.lab.edu"]
    tls.prepare("selfsigned", "hub.lab.edu", str(tmp_path), "", LOG, wildcard=True)
    assert open(cert, "rb").read() != first
    second = open(cert, "rb").read()
    tls.prepare("selfsigned", "hub.lab.edu", str(tmp_path), "", LOG, wildcard=True)
    assert open(cert, "rb").read() == second, "a covering certificate is kept"
    # and the wildcard certificate still serves single-origin mode: no churn when going back
    tls.prepare("selfsigned", "hub.lab.edu", str(tmp_path), "", LOG)
    assert open(cert, "rb").read() == second


def test_own_certificate_must_cover_the_wildcard_in_subdomain_mode(tmp_path):
    own, out = tmp_path / "own", tmp_path / "out"
    own_certificate(own, ["hub.lab.edu"])
    tls.prepare("own", "hub.lab.edu", str(out), str(own), LOG)  # single origin: fine
    with pytest.raises(tls.TLSError) as e:
        tls.prepare("own", "hub.lab.edu", str(out), str(own), LOG, wildcard=True)
    message = str(e.value)
    assert message.startswith(f"TLS_MODE=own: tls/cert.pem ({own}/cert.pem) does not cover "
                              "*.hub.lab.edu"), message
    assert "GPUHUB_USER_SUBDOMAINS=false" in message and "it names: hub.lab.edu" in message

    own_certificate(own, ["hub.lab.edu", "*.hub.lab.edu"])
    tls.prepare("own", "hub.lab.edu", str(out), str(own), LOG, wildcard=True)
    assert (out / "tls.crt").read_bytes() == (own / "cert.pem").read_bytes()


def test_own_certificate_for_another_host_is_refused_naming_both(tmp_path):
    own = tmp_path / "own"
    own_certificate(own, ["www.lab.edu", "*.other.edu"])
    with pytest.raises(tls.TLSError, match=r"does not cover hub\.lab\.edu, \*\.hub\.lab\.edu .*"
                                           r"it names: www\.lab\.edu, \*\.other\.edu"):
        tls.prepare("own", "hub.lab.edu", str(tmp_path / "out"), str(own), LOG, wildcard=True)
    # a wildcard one level up covers the hub's own name (but not its users' subdomains)
    own_certificate(own, ["*.lab.edu"])
    tls.prepare("own", "hub.lab.edu", str(tmp_path / "out"), str(own), LOG)
    with pytest.raises(tls.TLSError, match=r"does not cover \*\.hub\.lab\.edu \("):
        tls.prepare("own", "hub.lab.edu", str(tmp_path / "out"), str(own), LOG, wildcard=True)


# -- Traefik's static configuration (proxy/traefik.yml through proxy/entrypoint.sh) --

def test_letsencrypt_wildcard_through_the_dns_challenge_is_valid_traefik_configuration():
    from tests.test_static import render_static, schema
    config = render_static("letsencrypt", GPUHUB_USER_SUBDOMAINS="True", ACME_EMAIL="a@lab.edu",
                           ACME_DNS_PROVIDER="cloudflare", ACME_DNS_VARIABLES="CF_DNS_API_TOKEN",
                           CF_DNS_API_TOKEN="secret-token")
    errors = [f"{'/'.join(map(str, e.absolute_path))}: {e.message}"
              for e in schema("traefik-v3.json").iter_errors(config)]
    assert not errors, errors
    tls_config = config["entryPoints"]["https"]["http"]["tls"]
    assert tls_config["domains"] == [{"main": "hub.example.edu", "sans": ["*.hub.example.edu"]}]
    acme = config["certificatesResolvers"]["letsencrypt"]["acme"]
    assert acme["dnsChallenge"] == {"provider": "cloudflare"}
    assert "tlsChallenge" not in acme, "one challenge only"
    assert "secret-token" not in json.dumps(config), "credentials stay in the environment"


@pytest.mark.parametrize("mode, subdomains", [("letsencrypt", "false"), ("selfsigned", "true"),
                                              ("own", "true"), ("selfsigned", "false")])
def test_other_modes_render_without_the_dns_challenge(mode, subdomains):
    from tests.test_static import render_static, schema
    config = render_static(mode, GPUHUB_USER_SUBDOMAINS=subdomains)
    assert not list(schema("traefik-v3.json").iter_errors(config))
    text = json.dumps(config)
    assert "dnsChallenge" not in text and "sans" not in text
    if mode == "letsencrypt":
        assert config["certificatesResolvers"]["letsencrypt"]["acme"]["tlsChallenge"] == {}


def run_proxy_entrypoint(tmp_path, *args, **env):
    """proxy/entrypoint.sh as the proxy container runs it, with `traefik` replaced by a
    script that prints the environment it was started with."""
    import os
    import subprocess
    from tests.test_static import REPO
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    fake = bin_dir / "traefik"
    fake.write_text("#!/bin/sh\nenv\n")
    fake.chmod(0o755)
    template = tmp_path / "traefik.yml"
    template.write_text((REPO / "proxy" / "traefik.yml").read_text())
    script = (REPO / "proxy" / "entrypoint.sh").read_text().replace(
        "TEMPLATE=/etc/gpuhub/traefik.yml", f"TEMPLATE={template}").replace(
        "RENDERED=/tmp/traefik.yml", f"RENDERED={tmp_path}/rendered.yml").replace(
        "/acme/acme.json", f"{tmp_path}/acme.json")
    (tmp_path / "entrypoint.sh").write_text(script)
    return subprocess.run(["sh", str(tmp_path / "entrypoint.sh"), *args], capture_output=True,
                          text=True, env={"PATH": f"{bin_dir}:{os.environ['PATH']}",
                                          "GPUHUB_DOMAIN": "hub.example.edu",
                                          "GPUHUB_PROXY_CONTROL_IP": "10.254.254.6", **env})


def test_traefik_gets_the_dns_credentials_and_nothing_else_from_env(tmp_path):
    result = run_proxy_entrypoint(
        tmp_path, TLS_MODE="letsencrypt", GPUHUB_USER_SUBDOMAINS="true",
        ACME_DNS_PROVIDER="route53", ACME_DNS_VARIABLES="AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY",
        AWS_ACCESS_KEY_ID="AKIAEXAMPLE", AWS_SECRET_ACCESS_KEY="with spaces and $dollar 'quotes'",
        OAUTH_CLIENT_SECRET="not-for-traefik", JUPYTERHUB_CRYPT_KEY="ab" * 32)
    assert result.returncode == 0, result.stderr
    seen = dict(line.split("=", 1) for line in result.stdout.splitlines())
    seen.pop("PWD", None)  # set by the stand-in's own shell
    assert seen["AWS_ACCESS_KEY_ID"] == "AKIAEXAMPLE"
    assert seen["AWS_SECRET_ACCESS_KEY"] == "with spaces and $dollar 'quotes'"
    assert set(seen) == {"PATH", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"}, seen


@pytest.mark.parametrize("env, message", [
    ({"TLS_MODE": "letsencrypt", "GPUHUB_USER_SUBDOMAINS": "true"},
     "GPUHUB_USER_SUBDOMAINS=true with TLS_MODE=letsencrypt needs a certificate for "
     "*.hub.example.edu, which Let's Encrypt issues only through the DNS challenge: set ACME_DNS_PROVIDER"),
    ({"TLS_MODE": "letsencrypt", "ACME_DNS_PROVIDER": "cloudflare"},
     "ACME_DNS_PROVIDER=cloudflare needs its credentials: list their variables in ACME_DNS_VARIABLES"),
    ({"TLS_MODE": "letsencrypt", "ACME_DNS_PROVIDER": "cloudflare", "ACME_DNS_VARIABLES": "CF_DNS_API_TOKEN"},
     "ACME_DNS_VARIABLES names CF_DNS_API_TOKEN, but CF_DNS_API_TOKEN is not set in .env"),
    ({"ACME_DNS_VARIABLES": "CF;reboot"}, "ACME_DNS_VARIABLES: 'CF;reboot' is not a variable name"),
    ({"ACME_DNS_PROVIDER": "Cloud Flare"}, "ACME_DNS_PROVIDER=Cloud Flare is not valid"),
    ({"GPUHUB_USER_SUBDOMAINS": "maybe"}, "GPUHUB_USER_SUBDOMAINS=maybe is not valid: expected true or false"),
], ids=["wildcard-without-dns", "provider-without-credentials", "credential-unset",
        "bad-variable-name", "bad-provider", "bad-boolean"])
def test_proxy_refuses_a_dns_challenge_it_cannot_do_naming_the_variable(tmp_path, env, message):
    for args in ((), ("--render",)):
        result = run_proxy_entrypoint(tmp_path, *args, **env)
        assert result.returncode != 0 and message in result.stderr, (args, result.stderr)
