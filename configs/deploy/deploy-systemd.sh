#!/usr/bin/env bash
# hagw deploy action for services run by systemd, one host per node.
#   deploy:
#     command: ["/etc/hagw/deploy-systemd.sh", "{node}", "{url}", "{version}"]
# hagw has already drained the node and waited for its in-flight requests; it verifies
# the new version through the health check afterwards. Exit 75 (EX_TEMPFAIL) for
# failures worth retrying; any other non-zero exit fails the deploy (and rolls back).
set -euo pipefail
node="$1" url="$2" version="$3"
host="$(python3 -c 'import sys, urllib.parse; print(urllib.parse.urlsplit(sys.argv[1]).hostname)' "$url")"
service="${HAGW_SERVICE:-myapp}"

remote() {
  # ssh exits 255 when it cannot connect: a transient failure, so ask hagw to retry.
  ssh -o BatchMode=yes -o ConnectTimeout=10 "deploy@${host}" "$@" || {
    code=$?; [ "$code" -eq 255 ] && exit 75; exit "$code"; }
}

echo "deploying ${service} ${version} to ${node} (${host})"
remote "sudo /usr/local/bin/fetch-release ${service} ${version}"
remote "sudo ln -sfn /opt/${service}/releases/${version} /opt/${service}/current"
# systemd sends SIGTERM and waits TimeoutStopSec for the old process to finish.
remote "sudo systemctl restart ${service}.service"
remote "systemctl is-active --quiet ${service}.service"
echo "${node}: ${service} ${version} is running"
