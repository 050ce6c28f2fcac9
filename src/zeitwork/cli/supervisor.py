"""Child processes of ``zeitwork dev``: started with an argv list (no shell), each in its own
process group (a terminal's Ctrl-C reaches only ``dev``, which stops them in order), killed by
the kernel if ``dev`` itself dies (PR_SET_PDEATHSIG), their output prefixed line by line with
the service name. SIGHUP is a reload, never a failure: ``reload`` passes it to the services
that reload on it, and a child that ends on a SIGHUP anyway is started again.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TextIO

from zeitwork.cli.dev_plan import ChildSpec
from zeitwork.clients.admin import probe
from zeitwork.core.process import die_with_parent

_COLOURS = ("36", "33", "35", "32", "34")


class ChildFailed(Exception):
    """A child exited (or never became ready); ``str(exc)`` says which and how."""


@dataclass
class Child:
    spec: ChildSpec
    process: asyncio.subprocess.Process
    pump: asyncio.Task[None]
    stopping: bool = False
    tail: list[str] = field(default_factory=list)

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def running(self) -> bool:
        return self.process.returncode is None


class ChildSupervisor:
    """Starts children, pumps their output, waits for readiness, stops them in order."""

    def __init__(self, *, out: TextIO = sys.stdout, colour: bool | None = None) -> None:
        self._out = out
        self._colour = out.isatty() if colour is None else colour
        self.children: list[Child] = []
        self.exited = asyncio.Event()  # set when any child exits on its own
        self.hurry = asyncio.Event()  # set: stop without waiting (SIGKILL at once)
        self._watchers: set[asyncio.Task[None]] = set()

    def _note(self, text: str) -> None:
        with contextlib.suppress(OSError, ValueError):
            self._out.write(text + "\n")
            self._out.flush()

    def _prefix(self, name: str, index: int) -> str:
        label = f"{name:<13}|"
        if self._colour:
            return f"\x1b[{_COLOURS[index % len(_COLOURS)]}m{label}\x1b[0m "
        return label + " "

    async def _pump(self, child_index: int, spec: ChildSpec, stream: asyncio.StreamReader) -> None:
        prefix = self._prefix(spec.name, child_index)
        while True:
            try:
                line = await stream.readline()
            except ValueError:  # a line over the limit: take what is there
                line = await stream.read(64 * 1024)
            if not line:
                return
            text = line.decode("utf-8", "replace").rstrip("\n")
            child = self.children[child_index] if child_index < len(self.children) else None
            if child is not None:
                child.tail = [*child.tail[-19:], text]
            # keep draining even when our own output is gone (`| head`): a child blocked on
            # a full pipe would hang
            with contextlib.suppress(OSError, ValueError):
                self._out.write(prefix + text + "\n")
                self._out.flush()

    async def start(self, spec: ChildSpec, *, replace: int | None = None) -> Child:
        """Start ``spec``'s process (as child number ``replace``: a restart)."""
        process = await asyncio.create_subprocess_exec(
            *spec.argv,
            env=dict(spec.env),
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
            process_group=0,
            preexec_fn=die_with_parent,  # runs in the child between fork and exec
            limit=1024 * 1024,
        )
        assert process.stdout is not None
        index = len(self.children) if replace is None else replace
        pump = asyncio.create_task(
            self._pump(index, spec, process.stdout), name=f"dev.pump.{spec.name}"
        )
        child = Child(spec=spec, process=process, pump=pump)
        if replace is None:
            self.children.append(child)
        else:
            self.children[replace] = child
        watcher = asyncio.create_task(self._watch(child), name=f"dev.watch.{spec.name}")
        self._watchers.add(watcher)
        watcher.add_done_callback(self._watchers.discard)
        return child

    async def _watch(self, child: Child) -> None:
        await child.process.wait()
        if child.stopping:
            return
        if child.process.returncode == -signal.SIGHUP and child in self.children:
            # a hang-up (someone's kill -HUP) is a request to reload: start it again
            self._note(f"dev: {child.name} ended on SIGHUP; starting it again")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(child.pump, 2.0)
            try:
                await self.start(child.spec, replace=self.children.index(child))
            except OSError as exc:
                self._note(f"dev: {child.name} could not be started again: {exc}")
                self.exited.set()
            return
        self.exited.set()

    def reload(self, names: tuple[str, ...]) -> list[str]:
        """Send SIGHUP to the running children named (they reload); the names sent to."""
        sent: list[str] = []
        for child in self.children:
            if child.name in names and child.running and not child.stopping:
                with contextlib.suppress(ProcessLookupError):
                    child.process.send_signal(signal.SIGHUP)
                    sent.append(child.name)
        return sent

    def crashed(self) -> list[Child]:
        return [c for c in self.children if not c.running and not c.stopping]

    async def wait_ready(
        self, child: Child, *, within: float, ready: Callable[[int | None], bool] | None = None
    ) -> None:
        """Probe the child's ready URL until it answers 200 (or ``ready`` says so); fail at
        once when the child exits, or after ``within`` seconds."""
        accept = ready or (lambda status: status == 200)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + within
        delay = 0.05
        last: int | None = None
        while True:
            if not child.running:
                raise ChildFailed(
                    f"{child.name} exited with status {child.process.returncode} while starting"
                )
            last = await probe(child.spec.ready_url, within=2.0)
            if accept(last):
                return
            if loop.time() > deadline:
                raise ChildFailed(
                    f"{child.name} was not ready within {within:.0f} s "
                    f"({child.spec.ready_url} answered {last or 'nothing'})"
                )
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(child.process.wait(), delay)
            delay = min(delay * 1.5, 0.5)

    async def stop(self, child: Child) -> int | None:
        """SIGTERM, wait up to the child's stop timeout, then SIGKILL its process group."""
        child.stopping = True
        if child.running:
            with contextlib.suppress(ProcessLookupError):
                child.process.send_signal(signal.SIGTERM)
            exited = asyncio.ensure_future(child.process.wait())
            hurried = asyncio.ensure_future(self.hurry.wait())
            try:
                await asyncio.wait(
                    {exited, hurried},
                    timeout=child.spec.stop_timeout,
                    return_when=asyncio.FIRST_COMPLETED,
                )
            finally:
                hurried.cancel()
            if child.running and not self.hurry.is_set():
                self._note(
                    f"dev: {child.name} did not stop within {child.spec.stop_timeout:g} s;"
                    " killing it"
                )
        # whatever is left in its group (workers) goes too
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(child.process.pid, signal.SIGKILL)
        await child.process.wait()
        with contextlib.suppress(TimeoutError, asyncio.CancelledError):
            await asyncio.wait_for(child.pump, 2.0)
        return child.process.returncode

    async def stop_all(self, order: tuple[str, ...]) -> dict[str, int | None]:
        by_name = {c.name: c for c in self.children}
        codes: dict[str, int | None] = {}
        for name in order:
            child = by_name.get(name)
            if child is not None:
                self._note(f"dev: stopping {name}")
                codes[name] = await self.stop(child)
        return codes
