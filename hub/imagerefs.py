"""Image references: which registry an image comes from, and what to do when it is missing.

Why: Docker resolves a reference without a registry host (`gpuhub/tensorflow-2.9-gpu`) to
Docker Hub, where anyone may own the `gpuhub` namespace. gpuhub's own and the catalog's
images are built on the host (`make images`); a missing one is an error, never a pull.
"""


def registry(reference):
    """The registry host of an image reference, or None when it names none (Docker's
    rule: the first path component is a host if it has a '.' or a ':' or is localhost)."""
    first, slash, _ = reference.partition("/")
    if slash and ("." in first or ":" in first or first == "localhost"):
        return first
    return None


def missing_image_message(reference):
    return (f"The image {reference} is not on this host, and it names no registry, so it is "
            "not pulled (Docker would fetch it from Docker Hub, where anyone may publish "
            "under that name). Build it on the hub's host with `make images`, or name its "
            "registry in the reference (e.g. registry.example.edu/lab/image:tag).")
