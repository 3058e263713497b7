"""The settings module: every problem named by its variable, all at once."""

import datetime
import logging

import pytest
from cryptography import x509

from hub import settings, tls

BASE = {"GPUHUB_DOMAIN": "hub.example.edu", "AUTH_PROVIDER": "dummy",
        "GPUHUB_USER_IMAGE": "gpuhub/tensorflow-2.9-gpu:1"}


def test_defaults_fill_in_everything_optional():
    s = settings.load(BASE)
    assert s.tls_mode == "selfsigned" and s.https_port == 443
    assert s.mem_limit == "8G" and s.cpu_limit == 4.0 and s.idle_timeout == 3600
    assert s.public_url == "https://hub.example.edu/"


def test_secrets_are_never_shown_by_repr():
    secret, key, password = "client-secret-value", "ab" * 32, "shared-pass"
    s = settings.load({**BASE, "OAUTH_CLIENT_SECRET": secret, "JUPYTERHUB_CRYPT_KEY": key,
                       "GPUHUB_DUMMY_PASSWORD": password, "OAUTH_CLIENT_ID": "client-id"})
    shown = repr(s)
    for value in (secret, key, password):
        assert value not in shown
    # the values themselves are there for the code that needs them; other settings show
    assert (s.oauth_client_secret, s.crypt_key, s.dummy_password) == (secret, key, password)
    assert "client-id" in shown and "'oauth_client_secret': '***'" in shown


def test_ready_timeout_is_a_positive_number_of_seconds():
    assert settings.load(BASE).ready_timeout == 120
    assert settings.load({**BASE, "GPUHUB_READY_TIMEOUT": " 600 "}).ready_timeout == 600
    for bad in ("0", "-5", "2m"):
        with pytest.raises(settings.SettingsError) as e:
            settings.load({**BASE, "GPUHUB_READY_TIMEOUT": bad})
        assert f"GPUHUB_READY_TIMEOUT={bad!r}" in str(e.value), str(e.value)


def test_every_problem_is_reported_with_its_variable():
    env = {"AUTH_PROVIDER": "facebook", "GPUHUB_USER_IMAGE": "Gpuhub/Base:1",
           "GPUHUB_HTTPS_PORT": "70000", "GPUHUB_CPU_LIMIT": "-1", "GPUHUB_MEM_LIMIT": "8 GB",
           "GPUHUB_CONTAINER_USER": "0:0", "GPUHUB_HUB_CONNECT_URL": "hub:8081"}
    with pytest.raises(settings.SettingsError) as e:
        settings.load(env)
    message = str(e.value)
    for name in ("GPUHUB_DOMAIN is not set", "AUTH_PROVIDER='facebook'", "GPUHUB_USER_IMAGE='Gpuhub/Base:1'",
                 "GPUHUB_HTTPS_PORT='70000'", "GPUHUB_CPU_LIMIT='-1'", "GPUHUB_MEM_LIMIT='8 GB'",
                 "GPUHUB_CONTAINER_USER='0:0'", "GPUHUB_HUB_CONNECT_URL='hub:8081'"):
        assert name in message, message
    assert len(e.value.problems) == 8


@pytest.mark.parametrize("value", ["localhost", "10.0.0.5", "hub.lab-1.example.edu", "HUB.Example.EDU"])
def test_domains_accepted(value):
    assert settings.load({**BASE, "GPUHUB_DOMAIN": value}).domain == value.lower()


@pytest.mark.parametrize("value", ["hub example", "https://hub.example.edu", "-hub.edu", "a" * 300, "hub_1.edu"])
def test_domains_refused(value):
    with pytest.raises(settings.SettingsError, match="GPUHUB_DOMAIN"):
        settings.load({**BASE, "GPUHUB_DOMAIN": value})


@pytest.mark.parametrize("value", ["registry.example.edu:5000/lab/tf:2.9-Cu112", "gpuhub/tf@sha256:" + "a" * 64])
def test_images_with_registry_ports_tags_and_digests(value):
    assert settings.load({**BASE, "GPUHUB_USER_IMAGE": value}).user_image == value


def test_empty_limits_mean_none_and_admins_are_a_list():
    s = settings.load({**BASE, "GPUHUB_MEM_LIMIT": "", "GPUHUB_CPU_LIMIT": "",
                       "GPUHUB_ADMIN_USERS": "ada, grace,ada  linus"})
    assert s.mem_limit is None and s.cpu_limit is None
    assert s.admin_users == ("ada", "grace", "linus")


def test_selfsigned_certificate_is_generated_once_and_kept(tmp_path):
    log = logging.getLogger("test")
    cert, key = tls.prepare("selfsigned", "hub.lab.edu", str(tmp_path), str(tmp_path / "own"), log)
    first = open(cert, "rb").read()
    parsed = x509.load_pem_x509_certificate(first)
    names = parsed.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert names.get_values_for_type(x509.DNSName) == ["hub.lab.edu"]
    assert (tmp_path / "tls.key").stat().st_mode & 0o777 == 0o640  # the proxy reads it by group
    tls.prepare("selfsigned", "hub.lab.edu", str(tmp_path), str(tmp_path / "own"), log)
    assert open(cert, "rb").read() == first, "a valid certificate is kept across restarts"
    tls.prepare("selfsigned", "other.lab.edu", str(tmp_path), str(tmp_path / "own"), log)
    assert open(cert, "rb").read() != first, "a new domain gets a new certificate"


def test_own_certificate_is_checked_and_installed(tmp_path):
    own, out = tmp_path / "own", tmp_path / "out"
    own.mkdir()
    tls.write_selfsigned("hub.lab.edu", str(own / "cert.pem"), str(own / "key.pem"))
    tls.prepare("own", "hub.lab.edu", str(out), str(own), logging.getLogger("test"))
    assert (out / "tls.crt").read_bytes() == (own / "cert.pem").read_bytes()

    other = tmp_path / "other"
    other.mkdir()
    tls.write_selfsigned("x.edu", str(other / "cert.pem"), str(other / "key.pem"))
    (own / "key.pem").write_bytes((other / "key.pem").read_bytes())
    with pytest.raises(tls.TLSError, match="key.pem is not the key of the first certificate"):
        tls.prepare("own", "hub.lab.edu", str(out), str(own), logging.getLogger("test"))
    (own / "cert.pem").write_text("not a certificate")
    with pytest.raises(tls.TLSError, match="cert.pem is not a PEM certificate"):
        tls.prepare("own", "hub.lab.edu", str(out), str(own), logging.getLogger("test"))
    with pytest.raises(tls.TLSError, match="missing"):
        tls.prepare("own", "hub.lab.edu", str(out), str(tmp_path / "nowhere"), logging.getLogger("test"))


def test_letsencrypt_leaves_certificates_to_traefik(tmp_path):
    assert tls.prepare("letsencrypt", "hub.lab.edu", str(tmp_path), str(tmp_path), None) is None
    assert not list(tmp_path.iterdir())
