#!/bin/sh
# Render egress/squid.conf with the values from .env, then start Squid in the foreground.
# `entrypoint.sh --render [TEMPLATE]` only prints the rendered file (used by the tests).
set -eu

TEMPLATE=/etc/gpuhub/squid.conf
RENDERED=/tmp/squid.conf

: "${GPUHUB_SERVER_SUBNETS:=10.128.0.0/16}"
: "${PIP_INDEX_URL:=https://pypi.org/simple}"
# the host of the package index: scheme, credentials, port and path dropped
GPUHUB_MIRROR_HOST=$(printf '%s' "$PIP_INDEX_URL" | sed -e 's|^[a-zA-Z]*://||' -e 's|/.*||' -e 's|.*@||' -e 's|:[0-9]*$||')
case "$GPUHUB_SERVER_SUBNETS" in
  *[!0-9./]*|"") echo "egress: GPUHUB_SERVER_SUBNETS=$GPUHUB_SERVER_SUBNETS is not an IPv4 subnet" >&2; exit 1 ;;
esac
case "$GPUHUB_MIRROR_HOST" in
  *[!a-zA-Z0-9.-]*|"") echo "egress: no host name in PIP_INDEX_URL=$PIP_INDEX_URL" >&2; exit 1 ;;
esac

render() {
  sed -e "s|\${GPUHUB_SERVER_SUBNETS}|$GPUHUB_SERVER_SUBNETS|g" \
      -e "s|\${GPUHUB_MIRROR_HOST}|$GPUHUB_MIRROR_HOST|g" \
      "$1"
}

if [ "${1:-}" = "--render" ]; then
  render "${2:-$TEMPLATE}"
  exit 0
fi

render "$TEMPLATE" >"$RENDERED"
squid -k parse -f "$RENDERED"
exec squid -N -f "$RENDERED" "$@"
