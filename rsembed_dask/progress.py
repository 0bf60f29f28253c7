"""Campaign progress: a bar for terminals and notebooks, and the running report."""

from __future__ import annotations

import collections
from dataclasses import dataclass, field
from typing import Any

__all__ = ["CampaignReport", "ProgressBar"]


class ProgressBar:
    """``tqdm.auto`` (a widget in Jupyter, text in a terminal), or nothing."""

    def __init__(self, total: int, *, enabled: bool = True, desc: str = "units"):
        self._bar = None
        if enabled:
            from tqdm.auto import tqdm

            self._bar = tqdm(total=total, desc=desc, unit="unit", dynamic_ncols=True)

    def update(self, n: int = 1, postfix: dict | None = None) -> None:
        if self._bar is not None:
            self._bar.update(n)
            if postfix:
                self._bar.set_postfix(postfix, refresh=False)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()


@dataclass
class CampaignReport:
    """Counters of one ``run_campaign`` call (the cube's ``last_run`` attribute)."""

    path: str
    units_total: int
    units_todo: int
    units_done: int = 0
    units_failed: int = 0
    units_rerun: int = 0
    actors_started: int = 0
    actors_lost: int = 0
    samples_embedded: int = 0
    elapsed_s: float = 0.0
    startup_s: float = 0.0
    fetch_s: float = 0.0
    embed_s: float = 0.0
    requests: dict[str, int] = field(default_factory=lambda: collections.Counter())
    cells: dict[str, int] = field(default_factory=dict)
    workers_used: set = field(default_factory=set)

    def add(self, summary: Any) -> None:
        """Account a finished :class:`~rsembed_dask.units.UnitSummary`."""
        self.units_done += 1
        self.samples_embedded += summary.counts["ok"]
        self.fetch_s += summary.fetch_s
        self.embed_s += summary.embed_s
        self.requests.update(summary.requests)
        self.workers_used.add(summary.worker)

    @property
    def embeddings_per_s(self) -> float:
        return self.samples_embedded / self.elapsed_s if self.elapsed_s else 0.0

    def postfix(self) -> dict[str, Any]:
        return {"emb": self.samples_embedded, "ee_req": self.requests.get("sent", 0),
                "retried": self.requests.get("retried", 0)}

    def finish(self, cells: dict[str, int]) -> None:
        self.cells = dict(cells)

    def as_dict(self) -> dict[str, Any]:
        return {"units_total": self.units_total, "units_run": self.units_todo,
                "units_done": self.units_done, "units_failed": self.units_failed,
                "units_rerun": self.units_rerun, "actors_started": self.actors_started,
                "actors_lost": self.actors_lost, "samples_embedded": self.samples_embedded,
                "elapsed_s": round(self.elapsed_s, 3), "startup_s": round(self.startup_s, 3),
                "fetch_task_s": round(self.fetch_s, 3), "embed_task_s": round(self.embed_s, 3),
                "embeddings_per_s": round(self.embeddings_per_s, 3),
                "requests": dict(self.requests), "cells": self.cells,
                "workers_used": sorted(self.workers_used)}

    def summary(self) -> str:
        c, r = self.cells, self.requests
        return (f"cube {self.path}: {self.units_done}/{self.units_todo} units run this time "
                f"({self.units_total} in all, {self.units_rerun} re-run, {self.units_failed} failed); "
                f"cells ok {c.get('ok', 0)}, no_data {c.get('no_data', 0)}, failed {c.get('failed', 0)}, "
                f"pending {c.get('pending', 0)}; Earth Engine requests sent {r.get('sent', 0)} "
                f"(retried {r.get('retried', 0)}, failed {r.get('failed', 0)}); "
                f"{self.samples_embedded} embeddings in {self.elapsed_s:.1f}s "
                f"({self.embeddings_per_s:.1f}/s, after {self.startup_s:.1f}s loading the model)")
