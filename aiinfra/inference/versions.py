"""The versions of one model a serving process has loaded (plain Python: tested without Ray).

A version is loaded on first use (its files downloaded and hash-checked by the registry client) and
the ``keep`` most recently used stay loaded, so the old and the new version both answer while an
alias moves.
"""

from __future__ import annotations

import tempfile
import threading
from collections import OrderedDict
from typing import Any

from aiinfra.inference.predictor import Predictor

__all__ = ["LoadedVersions"]


class LoadedVersions:
    def __init__(self, registry: Any, name: str, keep: int = 2, device: str = "cpu") -> None:
        self.registry, self.name, self.keep, self.device = registry, name, keep, device
        self._loaded: OrderedDict[int, Predictor] = OrderedDict()
        self._lock = threading.Lock()

    def loaded(self, version: int) -> Predictor | None:
        """The predictor if it is loaded already (no I/O: safe on an event loop)."""
        return self._loaded.get(version)

    def get(self, version: int) -> Predictor:
        """The predictor, loading it if needed (blocking: call it from a thread on an event loop)."""
        with self._lock:
            predictor = self._loaded.get(version)
            if predictor is None:
                v = self.registry.get(f"{self.name}@{version}")
                model_dir = self.registry.download(v, tempfile.mkdtemp(prefix=f"aiinfra-{v.name}-{v.version}-"))
                predictor = Predictor(v, model_dir, device=self.device)
                self._loaded[version] = predictor
            self._loaded.move_to_end(version)
            while len(self._loaded) > self.keep:
                self._loaded.popitem(last=False)
            return predictor

    @property
    def versions(self) -> list[int]:
        return list(self._loaded)
