"""The model versions a serving process has loaded (plain Python: tested without Ray).

A version is loaded on first use (its files downloaded and hash-checked by the registry client) and
the ``keep`` most recently used stay loaded, over all the models the process serves: on an endpoint
with many models the long tail shares one bound, and the old and the new version of a model both
answer while its alias moves (``keep`` is at least 2).

``LoadedModels`` is the one cache of a process; ``LoadedVersions`` is one model's view of it (the
router of that model asks it for version numbers only).
"""

from __future__ import annotations

import tempfile
import threading
from collections import OrderedDict
from typing import Any

from aiinfra.inference.predictor import Predictor

__all__ = ["LoadedModels", "LoadedVersions", "load_predictor"]

Key = tuple[str, int]


def load_predictor(registry: Any, name: str, version: int, device: str = "cpu") -> Predictor:
    """``name@version``'s files downloaded (hash-checked) into a temporary directory and loaded (blocking).

    The directory goes once the predictor is built: every runtime reads its model into memory (torch state,
    ONNX and XGBoost from bytes), and a long tail loaded again and again must not fill the disk.
    """
    v = registry.get(f"{name}@{version}")
    with tempfile.TemporaryDirectory(prefix=f"aiinfra-{v.name}-{v.version}-") as tmp:
        return Predictor(v, registry.download(v, tmp), device=device)


class LoadedModels:
    """The ``keep`` most recently used (model, version) predictors of this process, loaded on first use."""

    def __init__(self, registry: Any, keep: int = 2, device: str = "cpu") -> None:
        if keep < 1:
            raise ValueError(f"keep must be at least 1, got {keep}")
        self.registry, self.keep, self.device = registry, keep, device
        self._loaded: OrderedDict[Key, Predictor] = OrderedDict()
        self._lock = threading.Lock()  # one load at a time: two requests for a cold version load it once

    def loaded(self, name: str, version: int) -> Predictor | None:
        """The predictor if it is loaded already (no I/O: safe on an event loop); a hit counts as a use, so
        what is evicted is what traffic has not asked for longest."""
        predictor = self._loaded.get((name, version))
        if predictor is not None:
            self.touch(name, version)
        return predictor

    def touch(self, name: str, version: int) -> None:
        try:
            self._loaded.move_to_end((name, version))
        except KeyError:  # evicted meanwhile by a load on another thread
            pass

    def get(self, name: str, version: int) -> Predictor:
        """The predictor, loading it if needed (blocking: call it from a thread on an event loop)."""
        with self._lock:
            predictor = self._loaded.get((name, version))
            if predictor is None:
                predictor = load_predictor(self.registry, name, version, self.device)
                self._loaded[(name, version)] = predictor
            self._loaded.move_to_end((name, version))
            while len(self._loaded) > self.keep:
                self._loaded.popitem(last=False)
            return predictor

    def of(self, name: str) -> LoadedVersions:
        return LoadedVersions(self.registry, name, loaded_models=self)

    @property
    def keys(self) -> list[Key]:
        """What is loaded, least recently used first."""
        return list(self._loaded)


class LoadedVersions:
    """One model's versions in a ``LoadedModels`` (its own, of ``keep`` versions, unless one is given)."""

    def __init__(self, registry: Any, name: str, keep: int = 2, device: str = "cpu", *,
                 loaded_models: LoadedModels | None = None) -> None:
        self.name = name
        self.models = loaded_models or LoadedModels(registry, keep=keep, device=device)

    def loaded(self, version: int) -> Predictor | None:
        return self.models.loaded(self.name, version)

    def get(self, version: int) -> Predictor:
        return self.models.get(self.name, version)

    @property
    def versions(self) -> list[int]:
        return [v for n, v in self.models.keys if n == self.name]
