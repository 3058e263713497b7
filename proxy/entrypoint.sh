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

# -- users' servers on their own origin (GPUHUB_USER_SUBDOMAINS, hub/origins.py) --
: "${ACME_DNS_PROVIDER:=}"
: "${ACME_DNS_VARIABLES:=}"
case "$(printf '%s' "${GPUHUB_USER_SUBDOMAINS:-false}" | tr 'A-Z' 'a-z')" in
  true|1|yes|on) SUBDOMAINS=yes ;;
  false|0|no|off|"") SUBDOMAINS=no ;;
  *) echo "proxy: GPUHUB_USER_SUBDOMAINS=$GPUHUB_USER_SUBDOMAINS is not valid: expected true or false" >&2; exit 1 ;;
esac
if [ -n "$ACME_DNS_PROVIDER" ]; then DNS_CHALLENGE=yes; TLS_CHALLENGE=no; else DNS_CHALLENGE=no; TLS_CHALLENGE=yes; fi
if [ "$TLS_MODE" = letsencrypt ] && [ "$SUBDOMAINS" = yes ] && [ "$DNS_CHALLENGE" = no ]; then
  echo "proxy: GPUHUB_USER_SUBDOMAINS=true with TLS_MODE=letsencrypt needs a certificate for *.$GPUHUB_DOMAIN, which Let's Encrypt issues only through the DNS challenge: set ACME_DNS_PROVIDER and ACME_DNS_VARIABLES (docs/admin.md)" >&2
  exit 1
fi
case "$ACME_DNS_PROVIDER" in
  *[!a-z0-9.-]*) echo "proxy: ACME_DNS_PROVIDER=$ACME_DNS_PROVIDER is not valid: expected a provider code such as cloudflare or route53" >&2; exit 1 ;;
esac
# The DNS provider's credentials: Traefik gets these and nothing else from .env (compose
# hands the container all of .env; the OAuth secret and the crypt key are not Traefik's).
DNS_ENV=""
for name in $(printf '%s' "$ACME_DNS_VARIABLES" | tr ',' ' '); do
  case "$name" in
    [A-Za-z_]*) case "$name" in *[!A-Za-z0-9_]*) bad=yes ;; *) bad=no ;; esac ;;
    *) bad=yes ;;
  esac
  if [ "$bad" = yes ]; then
    echo "proxy: ACME_DNS_VARIABLES: '$name' is not a variable name" >&2; exit 1
  fi
  eval "value=\${$name:-}"
  if [ -z "$value" ]; then
    echo "proxy: ACME_DNS_VARIABLES names $name, but $name is not set in .env" >&2; exit 1
  fi
  DNS_ENV="$DNS_ENV $name"
done
if [ "$TLS_MODE" = letsencrypt ] && [ "$DNS_CHALLENGE" = yes ] && [ -z "$DNS_ENV" ]; then
  echo "proxy: ACME_DNS_PROVIDER=$ACME_DNS_PROVIDER needs its credentials: list their variables in ACME_DNS_VARIABLES and set them in .env" >&2
  exit 1
fi
# keep lines marked "# $1-only" (the mark removed) when $2 is yes, drop them otherwise
only() {
  if [ "$2" = yes ]; then sed -e "s/ *# $1-only\$//"; else sed -e "/# $1-only\$/d"; fi
}

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
      "$1" \
    | only subdomains "$SUBDOMAINS" | only dns-challenge "$DNS_CHALLENGE" \
    | only tls-challenge "$TLS_CHALLENGE" \
    | sed -e "s|\${ACME_DNS_PROVIDER}|$(esc "$ACME_DNS_PROVIDER")|g"
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
# a clean environment: the DNS credentials (exported by name) and PATH
set -- traefik --configFile="$RENDERED" "$@"
for name in $DNS_ENV; do eval "set -- \"$name=\${$name}\" \"\$@\""; done
exec env -i PATH="$PATH" "$@"
