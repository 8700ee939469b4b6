#!/usr/bin/env bash
# hagw deploy action for containers run by hand with docker (or podman), one per node.
#   deploy:
#     command: ["/etc/hagw/deploy-container.sh", "{node}", "{url}", "{version}"]
# The node's port comes from its URL. Exit 75 (EX_TEMPFAIL) asks hagw to retry.
# Every value is passed as its own argv word (no shell in between), after "--" where the
# engine takes positional arguments, and the version is checked against hagw's rule
# (monitor/versions.py) before anything runs: it becomes an image tag.
set -euo pipefail

die() {
  printf '%s: %s\n' "${0##*/}" "$1" >&2
  exit "${2:-64}"  # 64 EX_USAGE, 65 EX_DATAERR: not retried
}

# ASCII letters, digits, . _ + - (at most 128), a letter or digit first, no "..".
valid_version() {
  local LC_ALL=C pattern='^[A-Za-z0-9][A-Za-z0-9._+-]{0,127}$'
  [[ $1 =~ $pattern && $1 != *..* ]]
}

# A container name, as docker allows it (hagw's node names always are).
valid_name() {
  local LC_ALL=C pattern='^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$'
  [[ $1 =~ $pattern ]]
}

[[ $# -eq 3 ]] || die "usage: ${0##*/} NODE URL VERSION"
node="$1" url="$2" version="$3"
image="${HAGW_IMAGE:-registry.example.com/myapp}"
engine="${HAGW_ENGINE:-docker}"
valid_version "$version" || die "refusing version $(printf '%q' "${version:0:40}"): a \
version is 1 to 128 ASCII letters, digits, '.', '_', '+' or '-', starts with a letter or \
a digit, and has no '..'" 65
valid_name "$node" || die "refusing node name $(printf '%q' "${node:0:40}")" 65
port="$(python3 -c 'import sys, urllib.parse; print(urllib.parse.urlsplit(sys.argv[1]).port or "")' "$url")"
[[ $port =~ ^[0-9]+$ ]] || die "no port in the node URL $(printf '%q' "$url")" 65
name="myapp-${node}"

# A registry hiccup is transient: let hagw retry the whole action.
"$engine" pull -- "${image}:${version}" || exit 75
# hagw drained the node already; stop gives the old container 30s after SIGTERM.
"$engine" stop --time 30 -- "$name" 2>/dev/null || true
"$engine" rm -- "$name" 2>/dev/null || true
"$engine" run --detach --name "$name" --restart unless-stopped \
  --publish "${port}:8000" --env "APP_VERSION=${version}" -- "${image}:${version}"
echo "${node}: ${image}:${version} running as ${name} on port ${port}"
