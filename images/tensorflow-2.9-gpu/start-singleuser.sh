#!/bin/bash
# Start the user's server. Under JupyterHub (JUPYTERHUB_API_TOKEN set) it is
# jupyterhub-singleuser with the spawner's arguments; alone (an instructor trying an
# image with `docker run -p 8888:8888 IMAGE`) it is plain JupyterLab.
set -euo pipefail

# A course image's files (GPUHUB_COURSE_DIR, read-only in the image) appear in the home,
# which is JupyterLab's root and the student's volume: copied into ~/<course slug> what
# the student does not have yet (new files of a new image version come, edited ones are
# never overwritten). The slug comes from the hub (GPUHUB_COURSE, checked by the catalog's
# schema); alone, the folder is ~/course.
if [ -n "${GPUHUB_COURSE_DIR:-}" ] && [ -d "$GPUHUB_COURSE_DIR" ]; then
  course_home="$HOME/${GPUHUB_COURSE:-course}"
  mkdir -p "$course_home" \
    && cp -R --no-clobber --no-preserve=mode,ownership "$GPUHUB_COURSE_DIR/." "$course_home/" \
    || echo "start-singleuser: could not copy the course files to $course_home" >&2
fi
if [ -n "${JUPYTERHUB_API_TOKEN:-}" ]; then
  exec jupyterhub-singleuser "$@"
fi
exec jupyter lab --ip=0.0.0.0 --port=8888 --no-browser "$@"
