"""`gpuhub export z2jh`: a values file for the zero-to-jupyterhub Helm chart, made from
the same settings and catalog the hub reads (docs/scale-out.md, Kubernetes).

    gpuhub export z2jh [--output FILE|-] [--registry HOST/PATH] [--catalog FILE]
        [--home-size 10Gi] [--storage-class NAME] [--schema values.schema.yaml]

What it writes: the authenticator and its allow rules as hub/auth.py configures them
(the upstream oauthenticator classes; the client secret only as a reference to a
Kubernetes Secret, which the chart allows through `hub.extraEnv`), the admins, one
`singleuser.profileList` entry per course (image, limits, `nvidia.com/gpu` for GPU
courses), group-gated courses through the `hub.extraConfig` snippet GROUP_GATING, the
idle culler, the user image, a volume per user. What does not carry over is listed at
the top of the file (`notes`). `values` is a plain function of the settings and the
catalog; `run` does the I/O.
"""

import inspect
import logging
import re
import sys
import textwrap

import yaml

from . import auth, courses, imagerefs, settings as settings_module

# the settings the export reads; the others (Docker wiring, the proxy, TLS files) are
# neither read nor required
EXPORT_SETTINGS = (
    "GPUHUB_DOMAIN", "GPUHUB_HTTPS_PORT", "GPUHUB_LAB_NAME", "GPUHUB_USER_SUBDOMAINS",
    "AUTH_PROVIDER", "GPUHUB_USERNAME_PATTERN", "GPUHUB_ADMIN_USERS", "GPUHUB_ALLOWED_USERS",
    "GPUHUB_ALLOWED_GROUPS", "GPUHUB_ADMIN_GROUPS", "GPUHUB_ALLOW_ALL", "OAUTH_CLIENT_ID",
    "OAUTH_CLIENT_SECRET", "OAUTH_CALLBACK_URL", "OIDC_ISSUER", "OIDC_USERNAME_CLAIM",
    "OIDC_GROUPS_CLAIM", "OIDC_SCOPES", "GITLAB_URL", "GOOGLE_HOSTED_DOMAIN",
    "GPUHUB_USER_IMAGE", "GPUHUB_USER_EGRESS", "GPUHUB_NOTEBOOK_DIR", "GPUHUB_CONTAINER_USER",
    "GPUHUB_MEM_LIMIT", "GPUHUB_CPU_LIMIT", "GPUHUB_SHM_SIZE", "GPUHUB_DISK_LIMIT",
    "GPUHUB_PIDS_LIMIT", "GPUHUB_START_TIMEOUT", "GPUHUB_IDLE_TIMEOUT",
    "GPUHUB_GPU_IDLE_TIMEOUT", "GPUHUB_GPU_MAX_AGE", "GPUHUB_CATALOG", "GPUHUB_GROUPS",
    "GPUHUB_GPU_MODE", "GPUHUB_GPU_MAX_USERS", "GPUHUB_GPU_GROUP_CAPS",
    "GPUHUB_GPU_QUEUE_TIMEOUT",
)

# the Kubernetes Secret that holds the OAuth client secret (docs/scale-out.md):
#   kubectl create secret generic gpuhub-oauth --from-literal=client-secret=...
SECRET_NAME, SECRET_KEY = "gpuhub-oauth", "client-secret"
# upstream classes: the chart's hub image has oauthenticator, not the hub package
UPSTREAM_CLASSES = {"github": "oauthenticator.github.GitHubOAuthenticator",
                    "gitlab": "oauthenticator.gitlab.GitLabOAuthenticator",
                    "google": "oauthenticator.google.GoogleOAuthenticator",
                    "oidc": "oauthenticator.generic.GenericOAuthenticator"}
GPU_RESOURCE = "nvidia.com/gpu"  # what NVIDIA's device plugin advertises

# Run by the chart's jupyterhub_config.py, where `c` and `get_config` are defined.
GROUP_GATING = '''\
# gpuhub: a course with `groups` in the catalog is offered to, and may be started by,
# members of those groups only (custom.gpuhub.courseGroups: slug -> groups). KubeSpawner
# calls this for the spawn form and again when a server starts (load_user_options), and
# refuses a profile slug that is not in the list returned here: a slug sent through the
# REST API or a hand-made form by a student outside the group fails to start.
def gpuhub_profile_list(spawner):
    course_groups = get_config("custom.gpuhub.courseGroups", {}) or {}
    mine = {group.name for group in spawner.user.groups}
    return [profile for profile in get_config("singleuser.profileList", []) or []
            if not course_groups.get(profile.get("slug"))
            or mine.intersection(course_groups[profile.get("slug")])]


c.KubeSpawner.profile_list = gpuhub_profile_list
'''


class ExportError(ValueError):
    """The settings cannot be exported; the message says which and why."""


def k8s_quantity(size):
    """gpuhub's sizes are Docker's (8G = 8 GiB); in Kubernetes 8G is 8*10^9 bytes: 8Gi."""
    return re.sub(r"([KMGT])$", r"\1i", size)


def image_spec(ref):
    """{"name", "tag"} as the chart wants an image; a digest stays on the tag."""
    rest, _, digest = ref.partition("@")
    name, tag = rest, "latest"
    if ":" in rest.rsplit("/", 1)[-1]:
        name, tag = rest.rsplit(":", 1)
    return {"name": name, "tag": f"{tag}@{digest}" if digest else tag}


def images_from(registry, refs):
    """{reference: what the cluster pulls}. A reference without a registry host would be
    pulled from Docker Hub, where anyone may own the namespace (hub/imagerefs.py): it
    gets `registry` in front, and without one the export stops naming the images."""
    bare = sorted({ref for ref in refs if not imagerefs.registry(ref)})
    if bare and not registry:
        raise ExportError(
            "these images name no registry, so the cluster would pull them from Docker Hub, "
            f"where anyone may publish under those names: {', '.join(bare)}. Push them to a "
            "registry the cluster can reach and pass it: --registry registry.example.edu/lab")
    if registry and not imagerefs.registry(registry + "/x"):
        raise ExportError(f"--registry {registry}: expected a registry host (with a '.' or "
                          "a port, or localhost), optionally with a path: registry.example.edu/lab")
    return {ref: f"{registry.rstrip('/')}/{ref}" if ref in bare else ref for ref in refs}


def _plain(value):
    if isinstance(value, (set, frozenset, tuple)):
        return sorted(value) if isinstance(value, (set, frozenset)) else list(value)
    return value


def authenticator(s, oidc_metadata=None):
    """(hub.config sections, hub.extraConfig snippets) for the login, from the same
    auth.provider_config the hub uses, minus what only the hub package has."""
    config = {"JupyterHub": {"authenticator_class": UPSTREAM_CLASSES[s.auth_provider]}}
    snippets = {}
    for key, value in auth.provider_config(s, oidc_metadata).items():
        section, trait = key.split(".")
        if key in ("JupyterHub.authenticator_class", "OAuthenticator.client_secret"):
            continue  # the class above; the secret comes from hub.extraEnv
        if trait == "provider_logout":
            continue  # gpuhub's logout handler (hub/logout.py): see notes()
        if callable(value):
            # a function (GitHub teams as groups, GitLab's group lookup): its source from
            # hub/auth.py in a snippet, so both deployments run the same code
            snippets[f"gpuhub-{trait}.py"] = (
                f"{inspect.getsource(value)}\n\nc.{section}.{trait} = {value.__name__}\n")
            continue
        config.setdefault(section, {})[trait] = _plain(value)
    config.setdefault("Authenticator", {}).update({
        "admin_users": sorted(s.admin_users),
        # JupyterHub checks username_pattern with re.match, which anchors only the start;
        # gpuhub checks the whole name (hub/names.py), and so does \Z here
        "username_pattern": f"(?:{s.username_pattern})\\Z",
    })
    if s.user_subdomains:
        port = "" if s.https_port == 443 else f":{s.https_port}"
        config["JupyterHub"]["subdomain_host"] = f"https://{s.domain}{port}"
    return config, snippets


def _limits(s, course, images):
    override = {"image": images[course.image]}
    mem, cpu = course.mem_limit or s.mem_limit, course.cpu_limit or s.cpu_limit
    if mem:
        override["mem_limit"] = mem  # KubeSpawner reads 8G as 8 GiB, as Docker does
    if cpu:
        override["cpu_limit"] = float(cpu)
    if course.gpus:
        override["extra_resource_limits"] = {GPU_RESOURCE: str(course.gpus)}
    if course.git_pull_default_url():
        override["default_url"] = course.git_pull_default_url()
    return override


def profile_list(s, catalog, images):
    out = []
    for course in catalog.courses:
        profile = {"slug": course.slug, "display_name": course.display_name,
                   "description": course.description}
        if course.default:
            profile["default"] = True
        profile["kubespawner_override"] = _limits(s, course, images)
        out.append(profile)
    return out


def _culler(s, catalog):
    cull = {"enabled": bool(s.idle_timeout), "users": False}
    if s.idle_timeout:
        cull["timeout"] = s.idle_timeout
    # the culler's maxAge ends every server; gpuhub's maximum age ends GPU sessions only,
    # so it carries over when every course holds a GPU and none has an age of its own
    if max_age_expressible(s, catalog):
        cull["maxAge"] = s.gpu_max_age
    return cull


def max_age_expressible(s, catalog):
    return bool(s.gpu_max_age and catalog and catalog.courses
                and all(c.gpus and c.gpu_max_age in (None, s.gpu_max_age)
                        for c in catalog.courses))


def values(s, catalog=None, oidc_metadata=None, home_size="10Gi", storage_class=None,
           registry=None):
    """The chart's values (a dict) for settings `s` and a hub.courses.Catalog (None:
    everybody gets GPUHUB_USER_IMAGE); `registry` for images that name none."""
    if s.auth_provider == "dummy":
        raise ExportError("AUTH_PROVIDER=dummy is the development login (one shared "
                          "password): choose github, gitlab, google or oidc to export")
    images = images_from(registry, [s.user_image] + [c.image for c in
                                                     (catalog.courses if catalog else ())])
    config, snippets = authenticator(s, oidc_metadata)
    uid, _, gid = s.container_user.partition(":")
    storage = {"type": "dynamic", "capacity": home_size, "homeMountPath": s.notebook_dir,
               # /dev/shm for input pipelines (GPUHUB_SHM_SIZE): a memory-backed emptyDir
               "extraVolumes": [{"name": "shm", "emptyDir": {
                   "medium": "Memory", "sizeLimit": k8s_quantity(s.shm_size)}}],
               "extraVolumeMounts": [{"name": "shm", "mountPath": "/dev/shm"}]}
    if storage_class:
        storage["dynamic"] = {"storageClass": storage_class}
    egress = {"nonPrivateIPs": s.user_egress == "proxy", "privateIPs": False,
              "cloudMetadataServer": False}
    singleuser = {
        "image": image_spec(images[s.user_image]),
        "uid": int(uid),
        "fsGid": int(gid or uid),
        "startTimeout": s.start_timeout,
        "storage": storage,
        # the pod may talk to the hub and proxy; its egress as GPUHUB_USER_EGRESS says
        "networkPolicy": {"enabled": True, "egressAllowRules": egress},
    }
    if s.mem_limit:
        singleuser["memory"] = {"limit": s.mem_limit}
    if s.cpu_limit:
        singleuser["cpu"] = {"limit": float(s.cpu_limit)}
    if s.disk_limit:  # the writable layer: Kubernetes' ephemeral storage
        singleuser["extraResource"] = {"limits": {"ephemeral-storage": k8s_quantity(s.disk_limit)}}
    out = {"hub": {"config": config,
                   "extraEnv": {"OAUTH_CLIENT_SECRET": {"valueFrom": {"secretKeyRef": {
                       "name": SECRET_NAME, "key": SECRET_KEY}}}}},
           "singleuser": singleuser,
           "cull": _culler(s, catalog)}
    if catalog:
        singleuser["profileList"] = profile_list(s, catalog, images)
        gated = {c.slug: list(c.groups) for c in catalog.courses if c.groups}
        if gated:
            out["custom"] = {"gpuhub": {"courseGroups": gated}}
            snippets["gpuhub-course-groups.py"] = GROUP_GATING
    if snippets:
        out["hub"]["extraConfig"] = snippets
    return out


def notes(s, catalog=None):
    """What does not carry over to the chart, one line each (the file's header)."""
    out = [
        "GPUs: NVIDIA's device plugin hands them out; gpuhub's allocator, its line for "
        "GPUs (GPUHUB_GPU_QUEUE_TIMEOUT) and GET /hub/api/gpus do not exist here: a pod "
        "that asks for a GPU waits Pending until one is free, up to singleuser.startTimeout",
        f"the client secret is read from the Kubernetes Secret {SECRET_NAME!r} (key "
        f"{SECRET_KEY!r}), never written here: kubectl create secret generic {SECRET_NAME} "
        f"--from-literal={SECRET_KEY}=...",
        "logout ends the hub's session only (gpuhub's provider logout is not in the chart)",
        "the Docker API guard has no counterpart: KubeSpawner talks to the Kubernetes API "
        "with the hub's service account; per-student networks become the chart's "
        "NetworkPolicy (user pods accept connections from the hub and proxy only)",
        "images are pulled by the cluster: push them to the registry named in them",
        f"GPUHUB_PIDS_LIMIT={s.pids_limit}: set podPidsLimit in the kubelet configuration",
    ]
    if s.user_egress == "deny":
        out.append("GPUHUB_USER_EGRESS=deny: user pods may still send DNS queries (the "
                   "chart's dnsPorts* egress rules)")
    if s.gpu_idle_timeout:
        out.append(f"GPUHUB_GPU_IDLE_TIMEOUT={s.gpu_idle_timeout}: the idle culler sees "
                   "activity, not GPU use")
    if s.gpu_max_age and not max_age_expressible(s, catalog):
        out.append(f"GPUHUB_GPU_MAX_AGE={s.gpu_max_age}: the culler's maxAge would end "
                   "every server, not only GPU sessions, so it is not set")
    if s.gpu_policy.mode == "shared":
        out.append(f"GPUHUB_GPU_MODE=shared: configure time-slicing in NVIDIA's device "
                   f"plugin (replicas: {s.gpu_policy.max_users_per_gpu})")
    if s.gpu_group_caps:
        out.append("GPUHUB_GPU_GROUP_CAPS: no per-group GPU cap (a ResourceQuota caps a "
                   "namespace, not a group)")
    if s.auth_provider == "google" and s.groups:
        out.append("GPUHUB_GROUPS: create the groups and their members in the hub's admin "
                   "page (Google logins bring no groups)")
    for course in catalog.courses if catalog else ():
        lost = [f"{name} {getattr(course, name)}" for name in
                ("idle_timeout", "gpu_idle_timeout", "gpu_max_age", "gpu_hours_per_week")
                if getattr(course, name) is not None]
        if course.gpus and course.allow_cpu:
            lost.append("allow_cpu (no CPU fallback: the pod waits for a GPU)")
        if lost:
            out.append(f"course {course.slug}: " + ", ".join(lost) + " not carried over")
    return out


def overlay_schema(schema):
    """The chart's schema without `required`: Helm checks the *merged* values (the chart's
    defaults, then this file), and the defaults supply what is required (hub.baseUrl,
    proxy, ...). Every key must still be known and every value of the right type."""
    if isinstance(schema, dict):
        return {k: overlay_schema(v) for k, v in schema.items() if k != "required"}
    if isinstance(schema, list):
        return [overlay_schema(v) for v in schema]
    return schema


def check_values(data, schema):
    """One line per value the chart's schema refuses, naming the field:
    'cull.timeout: '1h' is not of type 'integer', 'null''."""
    import jsonschema  # the hub image has it (hub/courses.py); only --schema needs it here
    overlay = overlay_schema(schema)
    validator = jsonschema.validators.validator_for(overlay)(overlay)
    return sorted(f"{'.'.join(map(str, e.absolute_path)) or '(top level)'}: {e.message}"
                  for e in validator.iter_errors(data))


def load_schema(path):
    try:
        with open(path, encoding="utf-8") as f:
            return yaml.safe_load(f)
    except (OSError, yaml.YAMLError) as e:
        raise ExportError(f"{path}: cannot read the chart's schema: {e}") from None


class _Dumper(yaml.SafeDumper):
    """Multi-line strings (the extraConfig snippets) as readable `|` blocks."""


_Dumper.add_representer(str, lambda dumper, text: dumper.represent_scalar(
    "tag:yaml.org,2002:str", text, style="|" if "\n" in text else None))


def render(data, lines):
    """The values as YAML, with `lines` (notes()) as a comment on top."""
    comment = ("# Values for the zero-to-jupyterhub Helm chart, written by `gpuhub export z2jh`\n"
               "# (docs/scale-out.md, Kubernetes). Not carried over:\n")
    for line in lines:
        comment += "".join(f"# {'-' if i == 0 else ' '} {part}\n" for i, part in
                           enumerate(textwrap.wrap(line, 86, break_on_hyphens=False)))
    return comment + yaml.dump(data, Dumper=_Dumper, sort_keys=False, allow_unicode=True,
                               width=100)


def add_parser(subparsers):
    export = subparsers.add_parser("export", help="write the deployment for another platform")
    targets = export.add_subparsers(dest="target", required=True)
    cmd = targets.add_parser("z2jh", help="a values file for the zero-to-jupyterhub Helm chart")
    cmd.add_argument("--output", "-o", default="-", help="file to write, or - (the default) "
                                                         "for standard output")
    cmd.add_argument("--catalog", help="course catalog file (default: GPUHUB_CATALOG)")
    cmd.add_argument("--home-size", default="10Gi",
                     help="size of each user's volume, a Kubernetes quantity (default 10Gi)")
    cmd.add_argument("--storage-class", help="StorageClass of the users' volumes "
                                             "(default: the cluster's)")
    cmd.add_argument("--registry", help="registry (and path) for images that name none, "
                                        "e.g. registry.example.edu/lab; push them there")
    cmd.add_argument("--schema", help="check the values against the chart's "
                                      "values.schema.yaml first (e.g. the chart's own, or "
                                      "../shared/schemas/z2jh-values.schema.yaml)")
    return export


def run(args, environ=None, discover=auth.discover_oidc, out=None):
    s = settings_module.load(environ, only=EXPORT_SETTINGS)
    log = logging.getLogger("gpuhub")
    if s.auth_provider != "dummy":  # values() says why dummy is not exported
        auth.check_names(s, log)
        auth.check(s)
    path = args.catalog or s.catalog
    catalog = courses.load_catalog(path) if path else None
    # the endpoints, as the hub finds them at start-up (the chart's hub does not discover)
    meta = discover(s.oidc_issuer, log) if s.auth_provider == "oidc" else None
    data = values(s, catalog, meta, args.home_size, args.storage_class, args.registry)
    if args.schema:
        problems = check_values(data, load_schema(args.schema))
        if problems:
            raise ExportError(f"the values do not fit {args.schema}:\n"
                              + "\n".join(f"  - {p}" for p in problems))
    text = render(data, notes(s, catalog))
    if args.output == "-":
        (out or sys.stdout).write(text)
    else:
        with open(args.output, "w", encoding="utf-8") as f:
            f.write(text)
    return 0

