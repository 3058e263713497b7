"""The proxy's default certificate for the `selfsigned` and `own` TLS modes.

The hub prepares it on the volume it shares with Traefik and names it in the dynamic
configuration it writes (TraefikProxy's default certificate), so both modes need no
change to Traefik's static configuration. With `letsencrypt`, Traefik does it all.
"""

import datetime
import ipaddress
import os
import shutil

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID


class TLSError(ValueError):
    """The certificate or key cannot be used; the message names the file."""


CERT_NAME = "tls.crt"
KEY_NAME = "tls.key"
# Renew a generated certificate this long before it expires.
RENEW_BEFORE = datetime.timedelta(days=30)
SELFSIGNED_LIFETIME = datetime.timedelta(days=825)  # the most browsers accept
# the hub's user and group may read the key: Traefik runs as root without
# CAP_DAC_OVERRIDE and joins the hub's group (docker-compose.yml: group_add)
KEY_MODE = 0o640


def prepare(mode, domain, tls_dir, own_dir, log, wildcard=False):
    """Put the certificate in place for `mode`; return (cert, key) paths, or None.
    `wildcard`: the certificate must also cover *.domain (users' servers on subdomains)."""
    if mode == "letsencrypt":
        return None
    os.makedirs(tls_dir, exist_ok=True)
    cert_path, key_path = os.path.join(tls_dir, CERT_NAME), os.path.join(tls_dir, KEY_NAME)
    if mode == "own":
        install_own(os.path.join(own_dir, "cert.pem"), os.path.join(own_dir, "key.pem"),
                    cert_path, key_path, required_names(domain, wildcard))
        log.info("TLS: using the certificate from %s", own_dir)
    elif _usable(cert_path, key_path, domain, wildcard):
        os.chmod(key_path, KEY_MODE)  # a key from a root-run hub was 600
        log.info("TLS: keeping the self-signed certificate for %s in %s",
                 " and ".join(required_names(domain, wildcard)), tls_dir)
    else:
        write_selfsigned(domain, cert_path, key_path, wildcard)
        log.warning("TLS: generated a self-signed certificate for %s in %s; browsers will "
                    "warn until users trust it (see docs/admin.md)",
                    " and ".join(required_names(domain, wildcard)), tls_dir)
    return cert_path, key_path


def _subject_names(domain, wildcard=False):
    try:
        return [x509.IPAddress(ipaddress.ip_address(domain))]
    except ValueError:
        return [x509.DNSName(domain)] + ([x509.DNSName(f"*.{domain}")] if wildcard else [])


def required_names(domain, wildcard=False):
    """The names a certificate for the hub must cover: the domain, and with users'
    servers on subdomains (GPUHUB_USER_SUBDOMAINS) the wildcard *.domain as well."""
    return [name.value if isinstance(name, x509.DNSName) else str(name.value)
            for name in _subject_names(domain, wildcard)]


def _covers(san, name):
    """Does a certificate with SubjectAlternativeName `san` cover `name` (RFC 6125: a
    wildcard stands for exactly one leftmost label; '*.x' itself is covered only by '*.x')?"""
    if not isinstance(name, str) or not name:
        return False
    try:
        return ipaddress.ip_address(name) in san.get_values_for_type(x509.IPAddress)
    except ValueError:
        pass
    name = name.lower()
    for dns in (d.lower() for d in san.get_values_for_type(x509.DNSName)):
        if dns == name:
            return True
        if dns.startswith("*.") and not name.startswith("*.") and "." in name \
                and name.split(".", 1)[1] == dns[2:]:
            return True
    return False


def missing_names(cert, names):
    """The names of `names` that `cert` does not cover."""
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return list(names)
    return [name for name in names if not _covers(san, name)]


def write_selfsigned(domain, cert_path, key_path, wildcard=False):
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.timezone.utc)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, domain[:64])])
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + SELFSIGNED_LIFETIME)
        .add_extension(x509.SubjectAlternativeName(_subject_names(domain, wildcard)), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    _write(key_path, key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    ), mode=KEY_MODE)
    _write(cert_path, cert.public_bytes(serialization.Encoding.PEM), mode=0o644)


def _write(path, data, mode):
    # write beside and rename, so Traefik never reads half a file
    tmp = f"{path}.tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    os.chmod(tmp, mode)
    os.replace(tmp, path)


def _usable(cert_path, key_path, domain, wildcard=False):
    """A generated certificate is kept while it matches the domain (and the wildcard, when
    wanted) and is not expiring."""
    if not (os.path.exists(cert_path) and os.path.exists(key_path)):
        return False
    try:
        cert = x509.load_pem_x509_certificate(open(cert_path, "rb").read())
    except ValueError:
        return False
    expires = cert.not_valid_after_utc
    fresh = expires - datetime.datetime.now(datetime.timezone.utc) > RENEW_BEFORE
    return fresh and not missing_names(cert, required_names(domain, wildcard))


def _names_of(cert):
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return []
    return [str(v) for v in san.get_values_for_type(x509.DNSName) + san.get_values_for_type(x509.IPAddress)]


def install_own(cert_src, key_src, cert_path, key_path, names=()):
    """Check the admin's certificate and key (and that it covers `names`), then copy
    them for the proxy."""
    for path in (cert_src, key_src):
        if not os.path.isfile(path):
            raise TLSError(f"TLS_MODE=own: {path} is missing (put cert.pem and key.pem in tls/)")
    try:
        certs = x509.load_pem_x509_certificates(open(cert_src, "rb").read())
    except ValueError as e:
        raise TLSError(f"TLS_MODE=own: {cert_src} is not a PEM certificate: {e}") from None
    try:
        key = serialization.load_pem_private_key(open(key_src, "rb").read(), password=None)
    except (ValueError, TypeError) as e:
        raise TLSError(f"TLS_MODE=own: {key_src} is not an unencrypted PEM private key: {e}") from None
    leaf = certs[0]
    public = serialization.PublicFormat.SubjectPublicKeyInfo
    if (leaf.public_key().public_bytes(serialization.Encoding.PEM, public)
            != key.public_key().public_bytes(serialization.Encoding.PEM, public)):
        raise TLSError(f"TLS_MODE=own: {key_src} is not the key of the first certificate in {cert_src}")
    if leaf.not_valid_after_utc < datetime.datetime.now(datetime.timezone.utc):
        raise TLSError(f"TLS_MODE=own: {cert_src} expired on {leaf.not_valid_after_utc:%Y-%m-%d}")
    lacking = missing_names(leaf, names)
    if lacking:
        wildcard = [n for n in lacking if n.startswith("*.")]
        raise TLSError(
            f"TLS_MODE=own: tls/cert.pem ({cert_src}) does not cover {', '.join(lacking)}"
            + (" (users' servers are on subdomains, GPUHUB_USER_SUBDOMAINS=true: get a "
               f"certificate that also names {wildcard[0]}, or set GPUHUB_USER_SUBDOMAINS=false)"
               if wildcard else "")
            + f"; it names: {', '.join(_names_of(leaf)) or 'nothing (no subjectAltName)'}")
    shutil.copyfile(cert_src, cert_path)
    os.chmod(cert_path, 0o644)
    _write(key_path, open(key_src, "rb").read(), mode=KEY_MODE)
