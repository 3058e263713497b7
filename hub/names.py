"""One form of user name for the whole stack, and the names derived from it.

A user name is checked once, at the edge (`valid_username`, used by the authenticators
through JupyterHub's `Authenticator.username_pattern`), after the provider's name is
normalised (`normalize`: NFKC, lower case). Everything downstream may assume the safe
form; each sink that could turn text into code or a rule has a second, independent guard:
Docker object names (`docker_name_part`), DockerSpawner's template rendering
(`template_literal`), Traefik rules (hub/proxy.py).
"""

import re
import string
import unicodedata

# Lower-case ASCII letters and digits plus . _ - @, 1 to 64 characters, starting with a
# letter or digit: what e-mail-style and campus logins need, nothing a URL, a Traefik rule,
# a Docker name or a shell treats specially.
DEFAULT_PATTERN = r"[a-z0-9][a-z0-9._@-]{0,63}"
DEFAULT_RULE = ("1 to 64 characters: lower-case letters a-z, digits 0-9 and the "
                "characters . _ - @, starting with a letter or a digit")

# DockerSpawner's own escaping (dockerspawner.DockerSpawner._escape): these stay as they
# are, every other byte of the UTF-8 text becomes '-' and two hex digits.
_SAFE = frozenset(string.ascii_lowercase + string.digits)


def normalize(name):
    """The provider's name in its one form: NFKC (full-width letters, ligatures and the
    like become plain ones) and lower case (providers compare names case-insensitively)."""
    return unicodedata.normalize("NFKC", name).lower()


def valid_username(name, pattern=DEFAULT_PATTERN):
    """True if `name` (already normalised) is allowed as a user name. The pattern must
    match the WHOLE name: JupyterHub's own check uses re.match, where `$` also matches
    before a final newline."""
    return isinstance(name, str) and re.fullmatch(pattern, name) is not None


def describe(pattern):
    """What a refused student is told names may look like."""
    if pattern == DEFAULT_PATTERN:
        return DEFAULT_RULE
    return f"names matching the regular expression {pattern}"


def docker_name_part(text):
    """`text` as part of a container or volume name.

    The same as DockerSpawner's default escaping (escapism with '-' as the escape
    character, then lower case) for every name that has no character below U+0010, so
    existing students keep their containers' and volumes' names. Unlike it, every escaped
    byte gets two hex digits: DockerSpawner writes U+0005 as '-5', so "\\x05a" and "Z"
    (escaped '-5A', lower-cased '-5a') shared one volume. With two digits each '-' starts
    exactly one three-character escape, and lower-casing hex loses nothing: the mapping is
    one-to-one on all text."""
    out = []
    for char in text:
        if char in _SAFE:
            out.append(char)
        else:
            out.extend(f"-{byte:02x}" for byte in char.encode("utf-8", "surrogatepass"))
    return "".join(out)


def template_literal(text):
    """`text` such that DockerSpawner's template rendering (str.format on every string
    of extra_create_kwargs) gives it back unchanged: braces doubled."""
    return text.replace("{", "{{").replace("}", "}}")


def from_docker_name_part(part):
    """The text `docker_name_part` made `part` from (the admin CLI names a volume's user);
    ValueError if `part` is not such a name."""
    if not re.fullmatch(r"(?:[a-z0-9]|-[0-9a-f]{2})*", part):
        raise ValueError(f"{part!r} is not an escaped name")
    raw = re.sub(r"-([0-9a-f]{2})|([a-z0-9])",
                 lambda m: chr(int(m[1], 16)) if m[1] else m[2], part)
    try:
        text = raw.encode("latin-1").decode("utf-8", "surrogatepass")
    except UnicodeDecodeError:
        raise ValueError(f"{part!r} is not an escaped name") from None
    if docker_name_part(text) != part:  # "-61" is not a's volume, "a" is
        raise ValueError(f"{part!r} is not how {text!r} is escaped")
    return text


def user_volume(volume_prefix, username):
    """The named volume of `username`'s home: what DockerSpawner renders from the template
    "{volume_prefix}-{{username}}" (hub/config.py) with gpuhub's escape."""
    return f"{volume_prefix}-{docker_name_part(username)}"
