"""The demo's synthetic production clients: they call the served model over HTTP like a real caller.

``ProductionClient`` sends frames of rows as prediction requests and then reports each answered
request's true outcome through ``/feedback``; ``BackgroundLoad`` calls the model without pause on a
thread of its own and counts every status and served version, so the scenario can show that an alias
switch or a canary costs no request.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx
import pandas as pd

__all__ = ["MODEL", "BackgroundLoad", "ProductionClient"]

MODEL = "churn"


class ProductionClient:
    """Production clients: predictions over HTTP, then the true outcomes through /feedback."""

    def __init__(self, base: str, auth: dict[str, str], features: list[str], *,
                 feedback_auth: dict[str, str] | None = None) -> None:
        """``auth`` calls the model; ``feedback_auth`` (default: ``auth``) posts the labels, which a predict
        token may not."""
        self.base, self.auth, self.features = base, auth, features
        self.feedback_auth = feedback_auth or auth
        self.http = httpx.Client(timeout=60, limits=httpx.Limits(max_connections=16))
        self.statuses: Counter[int] = Counter()
        self.versions: Counter[int] = Counter()

    def _predict(self, rows: pd.DataFrame) -> tuple[str, int, list[Any]]:
        instances = [{k: (v.item() if hasattr(v, "item") else v) for k, v in r.items()}
                     for r in rows[self.features].to_dict("records")]
        rid = uuid.uuid4().hex
        r = self.http.post(f"{self.base}/predict/{MODEL}", json={"instances": instances},
                           headers={**self.auth, "X-Request-ID": rid})
        self.statuses[r.status_code] += 1
        if r.status_code != 200:
            return rid, -1, []
        body = r.json()
        self.versions[body["version"]] += 1
        return rid, body["version"], [int(v) for v in rows["churned"]]

    def send(self, frame: pd.DataFrame, rows_per_request: int, *, threads: int = 8) -> int:
        """Send ``frame`` as requests of ``rows_per_request`` rows, then label every answered request."""
        chunks = [frame.iloc[i:i + rows_per_request] for i in range(0, len(frame), rows_per_request)]
        with ThreadPoolExecutor(threads) as pool:
            answered = [a for a in pool.map(self._predict, chunks) if a[1] >= 0]
        items = [{"request_id": rid, "labels": labels} for rid, _, labels in answered]
        for i in range(0, len(items), 1000):
            r = self.http.post(f"{self.base}/feedback/{MODEL}", json={"items": items[i:i + 1000]},
                               headers=self.feedback_auth)
            if r.status_code != 200:
                raise RuntimeError(f"feedback answered {r.status_code}: {r.text[:300]}")
        return len(answered)


class BackgroundLoad:
    """One client calling the model without pause: every status and served version is counted."""

    def __init__(self, client: ProductionClient, rows: pd.DataFrame) -> None:
        self.client, self.rows = client, rows
        self.statuses: Counter[int] = Counter()
        self.versions: Counter[int] = Counter()
        self.last_version: int | None = None
        self.streak = 0  # consecutive answers from last_version
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        i = 0
        with httpx.Client(timeout=60) as http:
            while not self._stop.is_set():
                row = self.rows.iloc[i % len(self.rows)]
                instance = {k: (row[k].item() if hasattr(row[k], "item") else row[k]) for k in self.client.features}
                try:
                    r = http.post(f"{self.client.base}/predict/{MODEL}", json={"instances": [instance]},
                                  headers=self.client.auth)
                    self.statuses[r.status_code] += 1
                    if r.status_code == 200:
                        version = r.json()["version"]
                        self.streak = self.streak + 1 if version == self.last_version else 1
                        self.last_version = version
                        self.versions[version] += 1
                except httpx.HTTPError:
                    self.statuses[0] += 1  # no answer at all counts as a failure too
                i += 1
                time.sleep(0.02)

    def __enter__(self) -> BackgroundLoad:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=30)

    @property
    def failed(self) -> int:
        return sum(n for status, n in self.statuses.items() if status != 200)
