"""How clients reach a platform service: its Ray actor (with retries across restarts) or its plain class in-process.

Every service client (registry, feature store, ...) takes a ``ServiceBackend``, so the same
client code runs against the actor on a cluster and against the class in tests and the CLI.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any, Protocol

from aiinfra.errors import AiInfraError, ServiceUnavailable

__all__ = ["ActorBackend", "LocalBackend", "ServiceBackend"]


class ServiceBackend(Protocol):
    def call(self, method: str, *args: Any, **kwargs: Any) -> Any: ...


class LocalBackend:
    """Calls the service's plain class in this process."""

    def __init__(self, service: Any) -> None:
        self.service = service

    def call(self, method: str, *args: Any, **kwargs: Any) -> Any:
        return getattr(self.service, method)(*args, **kwargs)


class ActorBackend:
    """All Ray calls to a platform actor go through here.

    A call that fails because the actor died (or is restarting) is retried until
    ``timeout_s`` passes; mutating calls are idempotent (``commit_version`` by its key,
    ``set_alias`` by its target), so a retry of a call that did run is harmless.
    Errors the service raised on purpose come back as themselves, not wrapped.
    """

    def __init__(self, get_handle: Callable[[], Any], *, service: str = "registry", timeout_s: float = 60.0) -> None:
        self._get_handle = get_handle
        self.service = service
        self._handle = get_handle()
        self.timeout_s = timeout_s

    def call(self, method: str, *args: Any, **kwargs: Any) -> Any:
        import ray
        from ray.exceptions import RayActorError, RayTaskError

        deadline = time.monotonic() + self.timeout_s
        delay = 0.05
        while True:
            try:
                return ray.get(getattr(self._handle, method).remote(*args, **kwargs), timeout=self.timeout_s)
            except RayTaskError as e:
                if isinstance(e.cause, AiInfraError):
                    raise e.cause from None
                raise
            except (RayActorError, ray.exceptions.GetTimeoutError) as e:
                if time.monotonic() >= deadline:
                    raise ServiceUnavailable(
                        f"the {self.service} actor did not answer {method} within {self.timeout_s:.0f}s ({type(e).__name__}); "
                        "check `ray status` and the actor's logs in the Ray dashboard"
                    ) from e
                time.sleep(delay)
                delay = min(delay * 2, 1.0)
                try:
                    self._handle = self._get_handle()
                except Exception:  # noqa: BLE001 - not found while restarting: keep the old handle, retry
                    pass
