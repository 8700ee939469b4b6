#!/usr/bin/env bash
# hagw deploy action for containers run by hand with docker (or podman), one per node.
#   deploy:
#     command: ["/etc/hagw/deploy-container.sh", "{node}", "{url}", "{version}"]
# The node's port comes from its URL. Exit 75 (EX_TEMPFAIL) asks hagw to retry.
set -euo pipefail
node="$1" url="$2" version="$3"
image="${HAGW_IMAGE:-registry.example.com/myapp}"
engine="${HAGW_ENGINE:-docker}"
port="$(python3 -c 'import sys, urllib.parse; print(urllib.parse.urlsplit(sys.argv[1]).port)' "$url")"
name="myapp-${node}"

# A registry hiccup is transient: let hagw retry the whole action.
"$engine" pull "${image}:${version}" || exit 75
# hagw drained the node already; stop gives the old container 30s after SIGTERM.
"$engine" stop --time 30 "$name" 2>/dev/null || true
"$engine" rm "$name" 2>/dev/null || true
"$engine" run --detach --name "$name" --restart unless-stopped \
  --publish "${port}:8000" --env "APP_VERSION=${version}" "${image}:${version}"
echo "${node}: ${image}:${version} running as ${name} on port ${port}"
