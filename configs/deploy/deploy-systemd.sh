#!/usr/bin/env bash
# hagw deploy action for services run by systemd, one host per node.
#   deploy:
#     command: ["/etc/hagw/deploy-systemd.sh", "{node}", "{url}", "{version}"]
# hagw has already drained the node and waited for its in-flight requests; it verifies
# the new version through the health check afterwards. Exit 75 (EX_TEMPFAIL) for
# failures worth retrying; any other non-zero exit fails the deploy (and rolls back).
#
# On the node's host, as deploy@host over ssh, it runs exactly these (for sudoers):
#   sudo -- /usr/local/bin/fetch-release SERVICE VERSION
#   sudo -- ln -sfn -- /opt/SERVICE/releases/VERSION /opt/SERVICE/current
#   sudo -- systemctl restart -- SERVICE.service
#   systemctl is-active --quiet -- SERVICE.service
# ssh hands the remote shell one string, so every word is quoted with printf %q; and the
# version is checked against hagw's rule (monitor/versions.py) before anything runs.
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

# A systemd service name: it becomes a path under /opt and a unit name.
valid_service() {
  local LC_ALL=C pattern='^[A-Za-z0-9][A-Za-z0-9@._-]{0,127}$'
  [[ $1 =~ $pattern && $1 != *..* ]]
}

[[ $# -eq 3 ]] || die "usage: ${0##*/} NODE URL VERSION"
node="$1" url="$2" version="$3"
service="${HAGW_SERVICE:-myapp}"
valid_version "$version" || die "refusing version $(printf '%q' "${version:0:40}"): a \
version is 1 to 128 ASCII letters, digits, '.', '_', '+' or '-', starts with a letter or \
a digit, and has no '..'" 65
valid_service "$service" || die "refusing HAGW_SERVICE $(printf '%q' "${service:0:40}")" 65
host="$(python3 -c 'import sys, urllib.parse; print(urllib.parse.urlsplit(sys.argv[1]).hostname or "")' "$url")"
[[ -n $host ]] || die "no host in the node URL $(printf '%q' "$url")" 65

remote() {
  # ssh joins its arguments with spaces for the remote shell: quote every word for it.
  local command code
  printf -v command '%q ' "$@"
  ssh -o BatchMode=yes -o ConnectTimeout=10 -- "deploy@${host}" "${command% }" || {
    # ssh exits 255 when it cannot connect: a transient failure, so ask hagw to retry.
    code=$?; [[ $code -eq 255 ]] && exit 75; exit "$code"; }
}

echo "deploying ${service} ${version} to ${node} (${host})"
remote sudo -- /usr/local/bin/fetch-release "$service" "$version"
remote sudo -- ln -sfn -- "/opt/${service}/releases/${version}" "/opt/${service}/current"
# systemd sends SIGTERM and waits TimeoutStopSec for the old process to finish.
remote sudo -- systemctl restart -- "${service}.service"
remote systemctl is-active --quiet -- "${service}.service"
echo "${node}: ${service} ${version} is running"
