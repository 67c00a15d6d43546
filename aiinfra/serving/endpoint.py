"""Which models a multi-model endpoint serves: rows in the metadata DB that its routers follow.

A Serve application serves the models its builder declared (``build_app(config, models)``, or a Serve
config file's ``args``) and the models added to it since, by name, with the reference each follows
(``aiinfra serve deploy NAME@ALIAS``). Adding, replacing or removing one is a row written here; every
replica of the application reads the rows on its follower's step (``ModelServer``) and starts or stops
that model's router without a redeploy, so the other models never restart. The rows outlive the
application's replicas: a replica that restarts, or a new one the autoscaler starts, serves the same set.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from aiinfra.errors import NotFound
from aiinfra.registry.types import parse_ref
from aiinfra.storage import MetadataDB, Migration

__all__ = ["ServedModels"]

COMPONENT = "served_models"
MIGRATIONS = (
    Migration(1, ("""CREATE TABLE served_models (
        app TEXT NOT NULL,
        name TEXT NOT NULL,
        ref TEXT NOT NULL,
        added_at DOUBLE PRECISION NOT NULL,
        added_by TEXT NOT NULL,
        PRIMARY KEY (app, name)
    )""",)),
)


class ServedModels:
    """The models added to Serve applications, by application and model name."""

    def __init__(self, db: MetadataDB, *, clock: Callable[[], float] = time.time) -> None:
        self.db, self._clock = db, clock
        db.ensure_schema(COMPONENT, MIGRATIONS)

    def add(self, app: str, ref: str, *, who: str = "unknown") -> str:
        """Serve ``ref`` on ``app`` (replacing what the app served under that model's name); the name."""
        name = parse_ref(ref).name
        with self.db.transaction() as tx:
            tx.execute(
                "INSERT INTO served_models (app, name, ref, added_at, added_by) VALUES (?, ?, ?, ?, ?) "
                "ON CONFLICT (app, name) DO UPDATE SET ref = excluded.ref, added_at = excluded.added_at, "
                "added_by = excluded.added_by",
                (app, name, ref, self._clock(), who))
        return name

    def remove(self, app: str, name: str) -> str:
        """Stop serving ``name`` on ``app``; the reference it followed (NotFound if it was not added there)."""
        with self.db.transaction() as tx:
            rows = tx.query("SELECT ref FROM served_models WHERE app = ? AND name = ?", (app, name))
            if not rows:
                raise NotFound(f"model {name!r} was not added to the Serve app {app!r}; "
                               "`aiinfra serve status` lists what it serves")
            tx.execute("DELETE FROM served_models WHERE app = ? AND name = ?", (app, name))
        return str(rows[0]["ref"])

    def of(self, app: str) -> dict[str, str]:
        """The models added to ``app``: name -> the reference it follows."""
        rows = self.db.query("SELECT name, ref FROM served_models WHERE app = ? ORDER BY name", (app,))
        return {str(r["name"]): str(r["ref"]) for r in rows}

    def clear(self, app: str) -> int:
        """Forget every model added to ``app`` (when the app itself is deleted); how many there were."""
        with self.db.transaction() as tx:
            return tx.execute("DELETE FROM served_models WHERE app = ?", (app,))
