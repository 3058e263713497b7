"""The course catalog: which images students may start, and who sees which.

The catalog is a YAML file in KubeSpawner's `profile_list` vocabulary (slug,
display_name, description, default), checked at start-up against catalog.schema.json
and a few rules a schema cannot say (unique slugs, one default open to everybody).
Every problem is reported at once, each naming the file, the entry and the field:

    catalog.yaml: courses[1] (slug 'cs101'): unknown field 'gpu' (did you mean 'gpus'? expected one of: ...)

Plain data and functions only, so the spawner, `images/build` and the tests share them.
"""

import difflib
import json
import math
import reprlib
import types
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Mapping, Optional, Tuple
from urllib.parse import quote, urlencode

import jsonschema
import yaml

SCHEMA = json.loads(Path(__file__).with_name("catalog.schema.json").read_text())
MAX_FILE_BYTES = 1 << 20
# A bound on values after YAML aliases are expanded, so "billion laughs" files fail fast.
MAX_VALUES = 100_000
MAX_DEPTH = 20


class CatalogError(ValueError):
    """The catalog cannot be used; `problems` has one line per problem."""

    def __init__(self, problems):
        self.problems = list(problems)
        super().__init__("\n".join(self.problems))


@dataclass(frozen=True)
class GitContent:
    """Course material nbgitpuller pulls into the student's home."""
    repo: str
    branch: Optional[str] = None
    urlpath: Optional[str] = None


@dataclass(frozen=True)
class Build:
    """How images/build makes a course's image; `context` is resolved to an absolute path."""
    context: Path
    dockerfile: str = "Dockerfile"
    args: Mapping[str, str] = field(default_factory=lambda: types.MappingProxyType({}))


@dataclass(frozen=True)
class Course:
    slug: str
    display_name: str
    image: str
    description: str = ""
    default: bool = False  # True for the catalog's default, marked or not
    gpus: int = 0
    allow_cpu: bool = False
    mem_limit: Optional[str] = None  # upper-case suffix, as JupyterHub's ByteSpecification wants
    cpu_limit: Optional[float] = None
    groups: Tuple[str, ...] = ()  # empty: everybody
    nbgitpuller: Optional[GitContent] = None
    build: Optional[Build] = None
    gpu_hours_per_week: Optional[float] = None  # a budget per student; None: no budget
    # culling overrides in seconds (hub.culling); None: the hub's GPUHUB_* setting
    idle_timeout: Optional[int] = None
    gpu_idle_timeout: Optional[int] = None
    gpu_max_age: Optional[int] = None

    def _git_pull_query(self):
        content = self.nbgitpuller
        params = [("repo", content.repo)]
        params += [(k, v) for k, v in (("branch", content.branch), ("urlpath", content.urlpath)) if v]
        return urlencode(params, quote_via=quote, safe="")

    def nbgitpuller_url(self, base_url="/"):
        """The link that starts the student's server and pulls the material, e.g.
        /hub/user-redirect/git-pull?repo=https%3A%2F%2F...; None without material."""
        if not self.nbgitpuller:
            return None
        return f"{base_url.rstrip('/')}/hub/user-redirect/git-pull?{self._git_pull_query()}"

    def git_pull_default_url(self):
        """The same pull as a Spawner.default_url (relative to the server), or None."""
        return f"/git-pull?{self._git_pull_query()}" if self.nbgitpuller else None


@dataclass(frozen=True)
class Catalog:
    courses: Tuple[Course, ...]
    path: str = "catalog"

    def __deepcopy__(self, memo):
        # traitlets deep-copies configuration values into every spawner; the catalog is
        # immutable (frozen, read-only mappings that deepcopy cannot copy), so one will do
        return self

    @property
    def default(self):
        return next(c for c in self.courses if c.default)

    def get(self, slug, default=None):
        return next((c for c in self.courses if c.slug == slug), default)

    def visible_to(self, groups: Iterable[str]):
        """The courses a member of `groups` may start, in catalog order. The default is
        open to everybody (load_catalog insists), so nobody is left with nothing."""
        groups = set(groups)
        return [c for c in self.courses if not c.groups or groups.intersection(c.groups)]


# ---------------------------------------------------------------- loading
class _Loader(yaml.SafeLoader):
    """safe_load that refuses duplicate keys (PyYAML silently keeps the last one)."""

    def construct_mapping(self, node, deep=False):
        seen = {}
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                continue
            key = self.construct_object(key_node, deep=deep)
            try:
                first = seen.setdefault(key, key_node.start_mark.line + 1)
            except TypeError:
                continue  # unhashable: PyYAML reports it
            if first != key_node.start_mark.line + 1:
                raise yaml.constructor.ConstructorError(
                    None, None, f"duplicate key {key!r} (first on line {first})",
                    key_node.start_mark)
        return super().construct_mapping(node, deep=deep)


_short = reprlib.Repr()
_short.maxlevel, _short.maxstring, _short.maxother, _short.maxlist, _short.maxdict = 2, 60, 60, 4, 4

_KINDS = {str: "the string", bool: "the boolean", int: "the integer", float: "the number",
          list: "a list", dict: "a mapping", type(None): "nothing (null)"}
_EXPECTED = {"string": "a string", "integer": "a whole number", "number": "a number",
             "boolean": "true or false", "array": "a list", "object": "a mapping"}


def _describe(value):
    kind = _KINDS.get(type(value), f"a {type(value).__name__}")
    if isinstance(value, (list, dict)) or value is None:
        return kind
    if type(value) not in _KINDS:  # dates, timestamps: YAML reads 2024-01-01 as a date
        return f"{kind} {_short.repr(str(value))}"
    return f"{kind} {_short.repr(value)}"


def _entry(data, index):
    entry = data["courses"][index]
    slug = entry.get("slug") if isinstance(entry, dict) else None
    return f"courses[{index}] (slug {_short.repr(slug)})" if isinstance(slug, str) else f"courses[{index}]"


def _field(path):
    out = ""
    for part in path:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def _schema_problem(error):
    """One line for a jsonschema error, without its (possibly huge) default message."""
    kind, value, schema = error.validator, error.instance, error.schema
    expected = schema.get("description", "")
    if kind == "additionalProperties":
        known = sorted(schema.get("properties", {}))
        lines = []
        for key in (k for k in value if k not in schema.get("properties", {})):
            near = difflib.get_close_matches(str(key), known, n=1)
            hint = f"did you mean {near[0]!r}? " if near else ""
            lines.append(f"unknown field {_short.repr(key)} ({hint}expected one of: {', '.join(known)})")
        return lines
    if kind == "required":
        return [f"missing required field {k!r} ({schema['properties'][k]['description']})"
                for k in error.validator_value if k not in value]
    if kind == "type":
        hint = " (quote it: YAML reads yes/no/on/off as booleans)" if (
            isinstance(value, bool) and error.validator_value == "string") else ""
        want = _EXPECTED.get(error.validator_value, error.validator_value)
        return [f"expected {want}, got {_describe(value)}{hint}" + (f" ({expected})" if expected else "")]
    if kind == "minItems" and error.validator_value == 1:
        return ["lists nothing (expected at least one entry)"]
    if kind == "uniqueItems":
        return [f"lists the same value twice ({_short.repr(value)})"]
    if kind in ("maxItems", "maxProperties"):
        return [f"has {len(value)} entries (expected at most {error.validator_value})"]
    if kind == "maxLength":
        return [f"is {len(value)} characters long (expected at most {error.validator_value})"]
    return [f"got {_describe(value)} (expected: {expected or f'{kind} {error.validator_value}'})"]


def _where(data, path):
    """(entry, field) for an error path: ('courses[1] (slug ...)', 'nbgitpuller.repo')."""
    if len(path) >= 2 and path[0] == "courses" and isinstance(path[1], int):
        return _entry(data, path[1]), _field(path[2:])
    return None, _field(path)


def _check_size(data):
    stack, count = [(data, 0)], 0
    while stack:
        value, depth = stack.pop()
        count += 1
        if count > MAX_VALUES or depth > MAX_DEPTH:
            return False
        if isinstance(value, dict):
            stack.extend((v, depth + 1) for v in value.values())
        elif isinstance(value, list):
            stack.extend((v, depth + 1) for v in value)
    return True


def _problems(data):
    """Every problem with the parsed file, as (entry, field, what) triples."""
    if not isinstance(data, dict):
        what = "the file is empty" if data is None else f"the file holds {_describe(data)}"
        return [(None, "", f"{what} (expected a mapping with a 'courses' list)")]
    if not _check_size(data):
        return [(None, "", f"too large or too deeply nested (more than {MAX_VALUES} values "
                           f"or {MAX_DEPTH} levels once YAML aliases are expanded)")]
    problems = []
    validator = jsonschema.Draft202012Validator(SCHEMA)
    errors = sorted(validator.iter_errors(data),
                    key=lambda e: [(isinstance(p, str), str(p).zfill(9)) for p in e.absolute_path])
    for error in errors:
        entry, name = _where(data, list(error.absolute_path))
        problems += [(entry, name, line) for line in _schema_problem(error)]
    if problems:
        return problems
    # rules beyond the schema
    courses = data["courses"]
    first_with = {}
    for i, entry in enumerate(courses):
        other = first_with.setdefault(entry["slug"], i)
        if other != i:
            problems.append((_entry(data, i), "slug", f"duplicate slug {entry['slug']!r} "
                                                      f"({_entry(data, other)} has it too)"))
    defaults = [i for i, entry in enumerate(courses) if entry.get("default")]
    for i in defaults[1:]:
        problems.append((_entry(data, i), "default", "only one course may be the default "
                                                     f"({_entry(data, defaults[0])} is too)"))
    default = defaults[0] if defaults else 0
    if courses[default].get("groups"):
        which = ("the default course" if defaults else
                 "the first course is the default (none says 'default: true'), so it")
        problems.append((_entry(data, default), "groups",
                         f"{which} must be open to everybody (no 'groups'): users who see "
                         "no other course start it"))
    for i, entry in enumerate(courses):
        if "cpu_limit" in entry and not math.isfinite(entry["cpu_limit"]):
            problems.append((_entry(data, i), "cpu_limit", "expected a finite number"))
        if "gpu_hours_per_week" in entry and not math.isfinite(entry["gpu_hours_per_week"]):
            problems.append((_entry(data, i), "gpu_hours_per_week", "expected a finite number"))
    return problems


def _course(entry, is_default, base_dir):
    git = entry.get("nbgitpuller")
    build = entry.get("build")
    mem = entry.get("mem_limit")
    return Course(
        slug=entry["slug"], display_name=entry["display_name"], image=entry["image"],
        description=entry.get("description", ""), default=is_default,
        gpus=entry.get("gpus", 0), allow_cpu=entry.get("allow_cpu", False),
        mem_limit=mem.upper() if mem else None,
        cpu_limit=float(entry["cpu_limit"]) if "cpu_limit" in entry else None,
        groups=tuple(entry.get("groups") or ()),
        nbgitpuller=GitContent(git["repo"], git.get("branch"), git.get("urlpath")) if git else None,
        build=Build(
            context=(base_dir / build["context"]).resolve(),
            dockerfile=build.get("dockerfile", "Dockerfile"),
            args=types.MappingProxyType(dict(build.get("args") or {})),
        ) if build else None,
        gpu_hours_per_week=(float(entry["gpu_hours_per_week"])
                            if "gpu_hours_per_week" in entry else None),
        # JSON Schema's integers include 1800.0
        **{name: int(entry[name]) for name in ("idle_timeout", "gpu_idle_timeout", "gpu_max_age")
           if name in entry},
    )


def parse_catalog(text, path="catalog"):
    """A Catalog from YAML text; `path` names the file in messages and anchors build contexts."""
    def fail(problems):
        raise CatalogError([
            f"{path}: " + ": ".join(p for p in (entry, f"field {name!r}" if name else "", what) if p)
            for entry, name, what in problems])
    if len(text.encode("utf-8", "surrogatepass")) > MAX_FILE_BYTES:
        fail([(None, "", f"the file is larger than {MAX_FILE_BYTES} bytes")])
    try:
        data = yaml.load(text, Loader=_Loader)  # noqa: S506 (a SafeLoader subclass)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        at = f"line {mark.line + 1}, column {mark.column + 1}: " if mark else ""
        fail([(None, "", f"{at}not valid YAML: {getattr(e, 'problem', None) or e}")])
    except RecursionError:
        fail([(None, "", f"nested too deeply (more than {MAX_DEPTH} levels)")])
    problems = _problems(data)
    if problems:
        fail(problems)
    entries = data["courses"]
    default = next((i for i, e in enumerate(entries) if e.get("default")), 0)
    base_dir = Path(path).resolve().parent
    return Catalog(tuple(_course(e, i == default, base_dir) for i, e in enumerate(entries)), str(path))


def load_catalog(path):
    """Read and check a catalog file; raise CatalogError listing every problem."""
    try:
        with open(path, "rb") as f:
            raw = f.read(MAX_FILE_BYTES + 1)
    except OSError as e:
        raise CatalogError([f"{path}: cannot read the catalog: {e.strerror}"]) from None
    if len(raw) > MAX_FILE_BYTES:
        raise CatalogError([f"{path}: the file is larger than {MAX_FILE_BYTES} bytes"])
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise CatalogError([f"{path}: not UTF-8 text (byte {e.start})"]) from None
    return parse_catalog(text, path)


def check_groups(catalog, existing_group_names, path=None):
    """Raise CatalogError if a course names a group JupyterHub does not have."""
    existing = set(existing_group_names)
    names = sorted(existing)
    known = ", ".join(names[:20]) + (f" and {len(names) - 20} more" if len(names) > 20 else "")
    problems = []
    for i, course in enumerate(catalog.courses):
        for group in course.groups:
            if group not in existing:
                problems.append(f"{path or catalog.path}: courses[{i}] (slug {course.slug!r}): "
                                f"field 'groups': unknown group {group!r} (existing groups: "
                                f"{known or 'none'}; add it to GPUHUB_GROUPS or sync it from the login)")
    if problems:
        raise CatalogError(problems)
