"""Helpers for tests that kill actors on purpose."""

from __future__ import annotations

import time

import ray


def actor_pid(handle, timeout_s: float = 120.0) -> int:
    """The actor's process id, waiting out a restart: right after a SIGKILL the actor answers
    ActorUnavailableError ("temporarily unavailable") until Ray has restarted it."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            return ray.get(handle.pid.remote(), timeout=60)
        except ray.exceptions.RayActorError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)
