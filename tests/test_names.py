"""One form of user name (hub/names.py): the pattern, the normalisation, and the container
and volume names derived from it. Property-based: user names are untrusted text."""

import string

import pytest
from dockerspawner import DockerSpawner
from hypothesis import example, given, settings
from hypothesis import strategies as st

from hub import names

ALLOWED_CHARS = string.ascii_lowercase + string.digits + "._-@"
allowed_names = st.builds(lambda first, rest: first + rest,
                          st.sampled_from(string.ascii_lowercase + string.digits),
                          st.text(ALLOWED_CHARS, max_size=63))


@given(allowed_names)
def test_every_allowed_name_matches_the_default_pattern(name):
    assert names.valid_username(name)


@pytest.mark.parametrize("name", [
    "", "-ada", ".ada", "_ada", "@ada", "Ada", "ada\n", "ada ", " ada", "ada/bob", "a" * 65,
    "ada`", "ada'", 'ada"', "ada(", "ada)", "ada{x}", "ada%60", "ada\x00", "аda",  # Cyrillic а
    "ada\u200b", "ada\u202e", "ada&&b", "ada||b", "ada!b", "ada,b", "ada;b", "ada:b", "ada~b",
])
def test_names_outside_the_pattern_are_refused(name):
    assert not names.valid_username(name)


def test_the_pattern_must_match_the_whole_name_not_a_prefix_or_up_to_a_newline():
    assert names.valid_username("ada", r"[a-z]+$")
    assert not names.valid_username("ada\n", r"[a-z]+$")  # re.match would accept it


@pytest.mark.parametrize("raw, normal", [("ADA", "ada"), ("ａｄａ", "ada"), ("ﬁona", "fiona"),
                                         ("Ada.Lovelace@Uni.Example", "ada.lovelace@uni.example")])
def test_provider_names_are_normalised_nfkc_then_lower_case(raw, normal):
    assert names.normalize(raw) == normal


@given(allowed_names)
def test_container_and_volume_names_are_unchanged_for_names_valid_today(name):
    # what DockerSpawner 14 writes today (escapism, '-' as escape character, lower case)
    assert names.docker_name_part(name) == DockerSpawner._escape(name)


@given(st.text().filter(lambda t: all(ord(c) >= 0x10 for c in t)))
def test_any_name_without_low_control_characters_keeps_dockerspawners_name(text):
    assert names.docker_name_part(text) == DockerSpawner._escape(text)


@given(allowed_names, allowed_names)
def test_distinct_allowed_names_get_distinct_container_and_volume_names(a, b):
    if a != b:
        assert names.docker_name_part(a) != names.docker_name_part(b)


@settings(max_examples=500)
@given(st.text(), st.text())
@example("\x05a", "Z")  # DockerSpawner: both '-5a', one volume for two users
def test_docker_names_are_one_to_one_on_all_text(a, b):
    if a != b:
        assert names.docker_name_part(a) != names.docker_name_part(b)


def test_dockerspawners_own_escaping_is_not_one_to_one():
    """The collision this module fixes, shown on DockerSpawner itself."""
    assert DockerSpawner._escape("\x05a") == DockerSpawner._escape("Z")
    assert names.docker_name_part("\x05a") != names.docker_name_part("Z")


@given(allowed_names)
def test_docker_names_are_valid_docker_object_names(name):
    part = names.docker_name_part(name)
    assert set(part) <= set(string.ascii_lowercase + string.digits + "-")


@given(st.text())
def test_template_literal_survives_dockerspawners_rendering(text):
    ns = {"username": "X", "raw_username": "Y", "servername": "", "prefix": "p"}
    assert names.template_literal(text).format(**ns) == text
