#!/bin/sh
# Render proxy/traefik.yml with the values from .env, then start Traefik.
# `entrypoint.sh --render TEMPLATE` only prints the rendered file (used by the tests).
set -eu

TEMPLATE=/etc/gpuhub/traefik.yml
RENDERED=/tmp/traefik.yml

: "${TLS_MODE:=selfsigned}"
: "${GPUHUB_HTTPS_PORT:=443}"
# the hub reads these case-insensitively; so does the proxy
TLS_MODE=$(printf '%s' "$TLS_MODE" | tr 'A-Z' 'a-z')
ACME_STAGING=$(printf '%s' "${ACME_STAGING:-false}" | tr 'A-Z' 'a-z')
GPUHUB_DOMAIN=$(printf '%s' "$GPUHUB_DOMAIN" | tr 'A-Z' 'a-z')
: "${GPUHUB_DOMAIN:?GPUHUB_DOMAIN is not set: put the host name students type in .env}"
: "${GPUHUB_PROXY_CONTROL_IP:?GPUHUB_PROXY_CONTROL_IP is not set (compose sets it)}"
: "${TRAEFIK_LOG_LEVEL:=INFO}"
: "${ACME_EMAIL:=}"
: "${ACME_STAGING:=false}"

case "$TLS_MODE" in
  selfsigned|own|letsencrypt) ;;
  *) echo "proxy: TLS_MODE=$TLS_MODE is not valid: expected selfsigned, own or letsencrypt" >&2; exit 1 ;;
esac
case "$ACME_STAGING" in
  true|1|yes) ACME_CA_SERVER=https://acme-staging-v02.api.letsencrypt.org/directory ;;
  false|0|no|"") ACME_CA_SERVER=https://acme-v02.api.letsencrypt.org/directory ;;
  *) echo "proxy: ACME_STAGING=$ACME_STAGING is not valid: expected true or false" >&2; exit 1 ;;
esac
# sed replacement text: escape the characters sed treats specially
esc() { printf '%s' "$1" | sed -e 's/[\\|&]/\\&/g'; }

render() {
  if [ "$TLS_MODE" = letsencrypt ]; then keep='^$'; else keep='# letsencrypt-only$'; fi
  sed -e "/$keep/d" \
      -e 's/ *# letsencrypt-only$//' \
      -e "s|\${GPUHUB_DOMAIN}|$(esc "$GPUHUB_DOMAIN")|g" \
      -e "s|\${GPUHUB_HTTPS_PORT}|$(esc "$GPUHUB_HTTPS_PORT")|g" \
      -e "s|\${GPUHUB_PROXY_CONTROL_IP}|$(esc "$GPUHUB_PROXY_CONTROL_IP")|g" \
      -e "s|\${TRAEFIK_LOG_LEVEL}|$(esc "$TRAEFIK_LOG_LEVEL")|g" \
      -e "s|\${ACME_EMAIL}|$(esc "$ACME_EMAIL")|g" \
      -e "s|\${ACME_CA_SERVER}|$(esc "$ACME_CA_SERVER")|g" \
      "$1"
}

if [ "${1:-}" = "--render" ]; then
  render "${2:-$TEMPLATE}"
  exit 0
fi

render "$TEMPLATE" >"$RENDERED"
if [ "$TLS_MODE" = letsencrypt ]; then
  # Traefik refuses ACME storage that others can read
  touch /acme/acme.json
  chmod 600 /acme/acme.json
fi
exec traefik --configFile="$RENDERED" "$@"
