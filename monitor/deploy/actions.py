"""The deploy action for one node: a command (argv, no shell) or a webhook.

Transient failures are retried with tenacity: a command that timed out or exited
with one of ``retry_exit_codes`` (75, EX_TEMPFAIL, by default), a webhook that
could not be reached or answered 5xx or 429. Output is kept for the record.

Whatever the runner hands over, a ``{version}`` or ``{previous_version}`` that is not a
valid version (``monitor.versions``) never reaches a command or a webhook: the action
fails at once, without a retry.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import signal
import sys
from dataclasses import dataclass

import aiohttp
from tenacity import AsyncRetrying, retry_if_exception, stop_after_attempt, wait_exponential

from gateway.config.redact import redact_urls, shown_url
from gateway.config.schema import DeployConfig
from monitor.deploy.record import OUTPUT_LIMIT
from monitor.versions import validate_version

#: The placeholders of ``deploy.command`` (``DeployConfig.validate`` refuses any other).
_PLACEHOLDER = re.compile(r"\{(node|url|version|previous_version)\}")
#: After the command exits, how long to keep reading output a background child may hold open.
_OUTPUT_GRACE = 1.0


class ActionFailed(Exception):
    def __init__(self, detail: str, output: str = "", *, transient: bool = False) -> None:
        super().__init__(detail)
        self.detail = detail
        self.output = output
        self.transient = transient


@dataclass(frozen=True, slots=True)
class ActionTarget:
    deploy: str
    node: str
    url: str
    version: str
    previous_version: str | None

    def fill(self, arg: str) -> str:
        """``arg`` with its placeholders filled in, in one pass (a value is never scanned
        for placeholders again). ActionFailed, not transient, for a version placeholder
        whose value is unknown or not a valid version."""

        def value(match: re.Match[str]) -> str:
            name = match.group(1)
            if name == "node":
                return self.node
            if name == "url":
                return self.url
            return self.checked(name)

        return _PLACEHOLDER.sub(value, arg)

    def checked(self, name: str) -> str:
        """The value of ``version`` or ``previous_version``; ActionFailed (not transient)
        unless it is known and a valid version."""
        text = self.version if name == "version" else self.previous_version
        if text is None:
            raise ActionFailed(f"{{{name}}} is unknown for {self.node}: refusing to run the "
                               "action without it")
        try:
            return validate_version(text)
        except ValueError as exc:
            raise ActionFailed(f"{{{name}}} for {self.node}: {exc}; refusing to run the "
                               "action") from None


async def run_command(argv: list[str], timeout: float, retry_codes: tuple[int, ...]) -> str:
    try:
        proc = await asyncio.create_subprocess_exec(
            *argv, stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT, start_new_session=True)
    except OSError as exc:
        raise ActionFailed(f"cannot run {argv[0]!r}: {exc.strerror or exc}") from None
    assert proc.stdout is not None
    chunks: list[bytes] = []

    async def collect() -> None:
        assert proc.stdout is not None
        while chunk := await proc.stdout.read(65536):
            chunks.append(chunk)

    reader = asyncio.create_task(collect())
    try:
        async with asyncio.timeout(timeout):
            code = await proc.wait()
    except TimeoutError:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        await proc.wait()
        reader.cancel()
        output = b"".join(chunks).decode("utf-8", "replace")[-OUTPUT_LIMIT:]
        raise ActionFailed(f"command timed out after {timeout:g}s", output,
                           transient=True) from None
    # A child the command left running may still hold stdout open; do not wait for it.
    done, _ = await asyncio.wait({reader}, timeout=_OUTPUT_GRACE)
    if not done:
        reader.cancel()
        chunks.append(b"\n[hagw: stopped reading output a background process kept open]\n")
    with contextlib.suppress(asyncio.CancelledError):
        await reader
    output = b"".join(chunks).decode("utf-8", "replace")[-OUTPUT_LIMIT:]
    if code != 0:
        raise ActionFailed(f"command exited with {code}", output, transient=code in retry_codes)
    return output


async def call_webhook(session: aiohttp.ClientSession, config: DeployConfig,
                       target: ActionTarget) -> str:
    hook = config.webhook
    assert hook is not None
    # A JSON body cannot inject anything, but the receiver may run what it gets.
    body = {"deploy": target.deploy, "node": target.node, "url": target.url,
            "version": target.checked("version"),
            "previous_version": (None if target.previous_version is None
                                 else target.checked("previous_version"))}
    try:
        async with session.post(hook.url, json=body, headers=hook.headers,
                                timeout=aiohttp.ClientTimeout(total=hook.timeout)) as resp:
            text = (await resp.text(errors="replace"))[-OUTPUT_LIMIT:]
            status = resp.status
    except (aiohttp.ClientError, TimeoutError, OSError) as exc:
        # The URL may carry a token: records and events show its origin only.
        raise ActionFailed(f"webhook {shown_url(hook.url)} failed: "
                           f"{redact_urls(str(exc)) or type(exc).__name__}",
                           transient=True) from None
    if status >= 300:
        raise ActionFailed(f"webhook answered HTTP {status}", text,
                           transient=status >= 500 or status == 429)
    return f"HTTP {status} {text}"


async def run_action(session: aiohttp.ClientSession, config: DeployConfig,
                     target: ActionTarget) -> str:
    """Run the action with retries; returns the output of every attempt."""
    outputs: list[str] = []

    async def attempt() -> None:
        try:
            if config.webhook is not None:
                outputs.append(await call_webhook(session, config, target))
            elif config.command:
                argv = [target.fill(arg) for arg in config.command]
                if argv[0] == "hagw":
                    # The same hagw installation as this gateway, wherever it lives.
                    argv[:1] = [sys.executable, "-m", "gateway"]
                outputs.append(await run_command(argv, config.command_timeout,
                                                 config.retry_exit_codes))
            else:
                raise ActionFailed("no deploy.command or deploy.webhook is configured")
        except ActionFailed as exc:
            outputs.append(exc.output + f"\n[attempt failed: {exc.detail}]\n")
            raise

    try:
        async for retry in AsyncRetrying(
                stop=stop_after_attempt(config.action_attempts),
                wait=wait_exponential(multiplier=0.5, max=10),
                retry=retry_if_exception(lambda e: isinstance(e, ActionFailed) and e.transient),
                reraise=True):
            with retry:
                await attempt()
    except ActionFailed as exc:
        raise ActionFailed(exc.detail, "".join(outputs)[-OUTPUT_LIMIT:]) from None
    return "".join(outputs)[-OUTPUT_LIMIT:]


def describe(config: DeployConfig) -> str:
    if config.webhook is not None:
        return f"webhook {shown_url(config.webhook.url)}"
    return json.dumps(list(config.command)) if config.command else "none"
