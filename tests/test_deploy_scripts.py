"""The shipped deploy actions (configs/deploy/*.sh) run for real, with fake ``ssh``,
``sudo``, ``systemctl`` and ``docker`` first on PATH. The fakes record their argv; the
fake ssh runs the remote command string the way sshd would, with ``bash -c``, in a
sandbox directory. So a version that could inject shows up as a file in the sandbox,
and a valid one must produce exactly the expected argv. Needs bash."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.conftest import require_tool

ROOT = Path(__file__).resolve().parent.parent
SYSTEMD = ROOT / "configs" / "deploy" / "deploy-systemd.sh"
CONTAINER = ROOT / "configs" / "deploy" / "deploy-container.sh"


@pytest.fixture
def needs_bash() -> str:
    return require_tool("bash")


pytestmark = pytest.mark.usefixtures("needs_bash")

RECORD = f"""#!{sys.executable}
import json, os, sys
with open(os.environ["FAKE_LOG"], "a") as log:
    log.write(json.dumps([os.path.basename(sys.argv[0]), *sys.argv[1:]]) + "\\n")
"""
FAKES = {
    # ssh [-o OPTION]... [--] DESTINATION COMMAND...: sshd hands the words, joined by
    # spaces, to the user's shell as one string.
    "ssh": RECORD + """
import subprocess
if os.environ.get("FAKE_SSH_EXIT"):
    sys.exit(int(os.environ["FAKE_SSH_EXIT"]))
args = sys.argv[1:]
while args[0] == "-o":
    args = args[2:]
if args[0] == "--":
    args = args[1:]
remote = " ".join(args[1:])
sys.exit(subprocess.run(["bash", "-c", remote], cwd=os.environ["FAKE_REMOTE"]).returncode)
""",
    "sudo": RECORD,  # records what it was asked to run, runs nothing
    "systemctl": RECORD,
    "docker": RECORD + """
sys.exit(int(os.environ.get("FAKE_DOCKER_EXIT", "0")) if sys.argv[1] == "pull" else 0)
""",
}

HOSTILE = ["v2; touch X", "$(touch X)", "`touch X`", "v2 && touch X", "v2\ntouch X",
           "v2|touch X", "../../x", "a/..", "--help", "-v", "", "v" * 129, "vé"]
SSH = ["ssh", "-o", "BatchMode=yes", "-o", "ConnectTimeout=10", "--", "deploy@10.0.0.5"]


@dataclass
class Sandbox:
    root: Path

    @property
    def remote(self) -> Path:
        return self.root / "remote"

    @property
    def log(self) -> Path:
        return self.root / "argv.log"

    def run(self, script: Path, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
        path = os.pathsep.join([str(self.root / "bin"), str(Path(sys.executable).parent),
                                os.environ.get("PATH", "")])
        return subprocess.run([str(script), *args], cwd=self.remote, capture_output=True,
                              text=True, timeout=30, env={
                                  "PATH": path, "HOME": str(self.root), "FAKE_LOG": str(self.log),
                                  "FAKE_REMOTE": str(self.remote), **env})

    @property
    def calls(self) -> list[list[str]]:
        if not self.log.exists():
            return []
        return [json.loads(line) for line in self.log.read_text().splitlines()]

    def untouched(self) -> bool:
        """Nothing was created where a command could have run (or next to it)."""
        return list(self.remote.iterdir()) == [] and not (self.root / "X").exists()


@pytest.fixture
def sandbox(tmp_path: Path) -> Sandbox:
    (tmp_path / "bin").mkdir()
    (tmp_path / "remote").mkdir()
    for name, text in FAKES.items():
        fake = tmp_path / "bin" / name
        fake.write_text(text)
        fake.chmod(0o755)
    return Sandbox(tmp_path)


def test_systemd_runs_exactly_the_expected_commands(sandbox: Sandbox) -> None:
    version = "2026.12.01+build.7"
    result = sandbox.run(SYSTEMD, "node-1", "http://10.0.0.5:8000", version)
    assert result.returncode == 0, result.stderr
    release = f"/opt/myapp/releases/{version}"
    assert sandbox.calls == [
        [*SSH, f"sudo -- /usr/local/bin/fetch-release myapp {version}"],
        ["sudo", "--", "/usr/local/bin/fetch-release", "myapp", version],
        [*SSH, f"sudo -- ln -sfn -- {release} /opt/myapp/current"],
        ["sudo", "--", "ln", "-sfn", "--", release, "/opt/myapp/current"],
        [*SSH, "sudo -- systemctl restart -- myapp.service"],
        ["sudo", "--", "systemctl", "restart", "--", "myapp.service"],
        [*SSH, "systemctl is-active --quiet -- myapp.service"],
        ["systemctl", "is-active", "--quiet", "--", "myapp.service"],
    ]
    assert f"node-1: myapp {version} is running" in result.stdout
    assert sandbox.untouched()


@pytest.mark.parametrize("version", HOSTILE)
def test_systemd_refuses_an_invalid_version_before_anything_runs(
        sandbox: Sandbox, version: str) -> None:
    result = sandbox.run(SYSTEMD, "node-1", "http://10.0.0.5:8000", version)
    assert result.returncode == 65, (result.stdout, result.stderr)
    assert "refusing version" in result.stderr and "no '..'" in result.stderr
    assert sandbox.calls == []
    assert sandbox.untouched()


def test_systemd_refuses_a_service_name_that_is_not_one(sandbox: Sandbox) -> None:
    result = sandbox.run(SYSTEMD, "node-1", "http://10.0.0.5:8000", "v2",
                         HAGW_SERVICE="myapp; touch X")
    assert result.returncode == 65 and "refusing HAGW_SERVICE" in result.stderr
    assert sandbox.calls == [] and sandbox.untouched()


def test_systemd_asks_for_a_retry_when_ssh_cannot_connect(sandbox: Sandbox) -> None:
    result = sandbox.run(SYSTEMD, "node-1", "http://10.0.0.5:8000", "v2", FAKE_SSH_EXIT="255")
    assert result.returncode == 75
    assert len(sandbox.calls) == 1


@pytest.mark.parametrize("args", [(), ("node-1", "http://10.0.0.5:8000"),
                                  ("node-1", "http://10.0.0.5:8000", "v2", "extra")])
def test_the_scripts_want_exactly_three_arguments(sandbox: Sandbox, args: tuple[str, ...]) -> None:
    for script in (SYSTEMD, CONTAINER):
        result = sandbox.run(script, *args)
        assert result.returncode == 64 and "usage:" in result.stderr
    assert sandbox.calls == []


def test_container_runs_exactly_the_expected_commands(sandbox: Sandbox) -> None:
    result = sandbox.run(CONTAINER, "node-1", "http://127.0.0.1:8001", "v2.4.1")
    assert result.returncode == 0, result.stderr
    image = "registry.example.com/myapp:v2.4.1"
    assert sandbox.calls == [
        ["docker", "pull", "--", image],
        ["docker", "stop", "--time", "30", "--", "myapp-node-1"],
        ["docker", "rm", "--", "myapp-node-1"],
        ["docker", "run", "--detach", "--name", "myapp-node-1", "--restart", "unless-stopped",
         "--publish", "8001:8000", "--env", "APP_VERSION=v2.4.1", "--", image],
    ]
    assert sandbox.untouched()


@pytest.mark.parametrize("version", HOSTILE)
def test_container_refuses_an_invalid_version_before_anything_runs(
        sandbox: Sandbox, version: str) -> None:
    result = sandbox.run(CONTAINER, "node-1", "http://127.0.0.1:8001", version)
    assert result.returncode == 65, (result.stdout, result.stderr)
    assert "refusing version" in result.stderr
    assert sandbox.calls == [] and sandbox.untouched()


def test_container_asks_for_a_retry_when_the_pull_fails(sandbox: Sandbox) -> None:
    result = sandbox.run(CONTAINER, "node-1", "http://127.0.0.1:8001", "v2",
                         FAKE_DOCKER_EXIT="1")
    assert result.returncode == 75
    assert sandbox.calls == [["docker", "pull", "--", "registry.example.com/myapp:v2"]]
