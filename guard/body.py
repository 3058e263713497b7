"""Reading request bodies the way the Docker engine reads them, and refusing what it
would read differently.

Go's encoding/json, which the engine uses, matches object keys case-insensitively
(`"privileged": true` sets `Privileged`) and lets a repeated key win over an earlier one.
So the guard parses every body into objects whose keys are folded to lower case, and
refuses keys that are not plain ASCII (Go's case folding also maps U+017F to "s" and
U+212A to "k") or that repeat after folding. What the guard checked is then exactly
what the engine will see; the original bytes are forwarded unchanged.
"""

import json


class Refusal(Exception):
    """A request the guard does not forward; `rule` names the row that refused it."""

    def __init__(self, rule, message, status=403):
        super().__init__(f"{message} (rule: {rule})")
        self.rule = rule
        self.message = f"{message} (rule: {rule})"
        self.status = status


class Folded(dict):
    """A JSON object with keys folded to lower case (as the engine matches struct fields).
    `original` keeps the keys as sent: maps (labels, network names) are case-sensitive."""

    def __init__(self):
        super().__init__()
        self.original = {}


def _fold(pairs):
    folded = Folded()
    for key, value in pairs:
        if not key.isascii():
            raise Refusal("malformed-body", f"the key {key!r} is not ASCII", 400)
        lower = key.lower()
        if lower in folded:
            raise Refusal("malformed-body", f"the key {key!r} appears twice", 400)
        folded[lower] = value
        folded.original[lower] = key
    return folded


def keys_as_sent(value):
    """The keys of a JSON map as sent (labels, network names: case matters there)."""
    return [value.original[k] for k in value] if isinstance(value, Folded) else []


def _no_constant(name):
    raise Refusal("malformed-body", f"{name} is not JSON", 400)


def parse(raw, max_body):
    """The JSON object in `raw` with folded keys; empty bodies are {}."""
    if len(raw) > max_body:
        raise Refusal("body-too-large", f"the body is larger than {max_body} bytes", 413)
    if not raw.strip():
        return Folded()
    try:
        text = raw.decode("utf-8")
        value = json.loads(text, object_pairs_hook=_fold, parse_constant=_no_constant)
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as e:
        raise Refusal("malformed-body", f"the body is not JSON: {e}", 400) from None
    if not isinstance(value, Folded):
        raise Refusal("malformed-body", "the body is not a JSON object", 400)
    return value


# -- typed access: a value of the wrong type is malformed, never "absent" --

def get(obj, key, kind, default=None):
    """obj[key] (folded) if it is of `kind` (or null: `default`); else malformed."""
    value = obj.get(key.lower())
    if value is None:
        return default
    if kind is int and isinstance(value, bool):
        kind = ()  # true is not a number
    if not isinstance(value, kind):
        raise Refusal("malformed-body", f"{key} has the wrong type", 400)
    return value


def obj(parent, key):
    return get(parent, key, Folded, Folded())


def strings(parent, key):
    value = get(parent, key, list, [])
    if not all(isinstance(v, str) for v in value):
        raise Refusal("malformed-body", f"{key} must be a list of strings", 400)
    return value


def truthy(value):
    """Docker's notion of "set": anything but null, false, 0, "" and empty containers."""
    return value not in (None, False, 0, "", [], {}) and value != Folded()
