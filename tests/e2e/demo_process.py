"""`aiinfra demo --keep-serving` as a user runs it, in a process of its own: shared by the e2e modules."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

import pytest

BIN = Path(sys.executable).parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def serving_demo(home: Path, args: list[str], *, timeout_s: float,
                 env: dict[str, str] | None = None) -> Iterator[dict[str, Any]]:
    """Run the demo until it serves (it prints "press Ctrl-C to stop"), yield how to reach it, then SIGINT it.
    ``env``: more environment for the demo and the CLI calls made beside it (an ``AIINFRA_CONFIG``, say)."""
    port = free_port()
    env = {**os.environ, **(env or {}), "AIINFRA_HOME": str(home), "AIINFRA_SERVE_PORT": str(port)}
    env.pop("RAY_ADDRESS", None)
    # A session of its own: if the demo does not stop by itself, its whole process group (the embedded Ray,
    # Serve's HAProxy) is killed, so nothing it started outlives the test and holds a port the next one needs.
    proc = subprocess.Popen([str(BIN / "aiinfra"), "demo", *args, "--keep-serving"], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)
    lines: list[str] = []
    ready = threading.Event()

    def pump() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            lines.append(line)
            if "press Ctrl-C to stop" in line:
                ready.set()
        ready.set()

    threading.Thread(target=pump, daemon=True).start()
    if not ready.wait(timeout=timeout_s) or proc.poll() is not None:
        _kill_group(proc)
        pytest.fail("the demo did not come up:\n" + "".join(lines[-80:]))
    token = (home / "api_token").read_text().strip()
    try:
        yield {"home": home, "base": f"http://127.0.0.1:{port}", "lines": lines, "proc": proc, "env": env,
               "auth": {"Authorization": f"Bearer {token}"}}
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGINT)
            try:
                proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                pass
        _kill_group(proc)  # whatever of its group is left (nothing, when it stopped cleanly)


def _kill_group(proc: subprocess.Popen) -> None:
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
    proc.wait(timeout=30)


class DemoOnDemand:
    """A module's serving demo, started on first use and again if a test stopped it (Ctrl-C), in a fresh home:
    each test passes alone and in any order. Only one runs at a time; ``close`` stops the last."""

    def __init__(self, make_home: Any, args: list[str], *, timeout_s: float) -> None:
        self._make_home, self._args, self._timeout_s = make_home, args, timeout_s
        self._stack = ExitStack()
        self._running: dict[str, Any] | None = None

    def __call__(self) -> dict[str, Any]:
        if self._running is None or self._running["proc"].poll() is not None:
            self._running = self._stack.enter_context(serving_demo(self._make_home(), self._args, timeout_s=self._timeout_s))
        return self._running

    def close(self) -> None:
        self._stack.close()
