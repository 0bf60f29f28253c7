"""Campaign progress: a bar for terminals and notebooks, and the running report."""

from __future__ import annotations

import collections
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

__all__ = ["CampaignReport", "ProgressBar"]

#: Failure reasons named in the summary (most common first).
TOP_REASONS = 3
#: Characters of one reason shown in the summary.
REASON_CHARS = 100


def _shorten(reason: str, limit: int = REASON_CHARS) -> str:
    reason = " ".join(reason.split())
    return reason if len(reason) <= limit else reason[:limit - 3] + "..."


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
    models: set = field(default_factory=set)
    gpu_wait_s: float = 0.0
    failures: dict[str, int] = field(default_factory=dict)
    #: One entry per GPU worker seen (a restarted worker is a new entry): address, name, units,
    #: embeddings, load_s (model load time), state (loading, ready, quarantined, lost), error.
    workers: list[dict[str, Any]] = field(default_factory=list)
    #: Quarantined GPU workers: label -> last error.
    quarantined: dict[str, str] = field(default_factory=dict)

    def add(self, summary: Any) -> None:
        """Account a finished :class:`~rsembed_dask.campaign.tasks.UnitSummary`."""
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
        out: dict[str, Any] = {"emb": self.samples_embedded, "ee_req": self.requests.get("sent", 0),
                               "retried": self.requests.get("retried", 0)}
        if self.quarantined:
            out["quarantined"] = ",".join(self.quarantined)
        return out

    def finish(self, cells: dict[str, int], failures: Mapping[str, int] | None = None) -> None:
        """Record the cube's cell counts and its failed cells' reasons (``{reason: cells}``)."""
        self.cells = dict(cells)
        self.failures = dict(collections.Counter(failures or {}).most_common())

    def failure_line(self, top: int = TOP_REASONS) -> str:
        """``failed N: a x reason; b x reason; ...`` with a hint how to re-run them ('' when none failed)."""
        n = self.cells.get("failed", 0)
        if not n:
            return ""
        common = list(self.failures.items())[:top]
        parts = [f"{k} x {_shorten(reason)}" for reason, k in common]
        rest = sum(self.failures.values()) - sum(k for _, k in common)
        if rest:
            parts.append(f"{rest} x {len(self.failures) - len(common)} other reason(s)")
        reasons = "; ".join(parts) if parts else "reasons not recorded"
        return (f"failed {n}: {reasons} (re-run them with --retry-failed, or "
                f"run_campaign(..., retry_failed=True); the cube's `error` array has every reason)")

    def as_dict(self) -> dict[str, Any]:
        return {"units_total": self.units_total, "units_run": self.units_todo,
                "units_done": self.units_done, "units_failed": self.units_failed,
                "units_rerun": self.units_rerun, "actors_started": self.actors_started,
                "actors_lost": self.actors_lost, "samples_embedded": self.samples_embedded,
                "elapsed_s": round(self.elapsed_s, 3), "startup_s": round(self.startup_s, 3),
                "fetch_task_s": round(self.fetch_s, 3), "embed_task_s": round(self.embed_s, 3),
                "embeddings_per_s": round(self.embeddings_per_s, 3),
                "requests": dict(self.requests), "cells": self.cells,
                "failure_reasons": dict(list(self.failures.items())[:TOP_REASONS]),
                "gpu_wait_s": round(self.gpu_wait_s, 3),
                "workers_used": sorted(self.workers_used),
                # e.g. "cuda:0 bfloat16 batch 256": device, precision and batch as the actors resolved them
                "models": sorted(self.models),
                "workers": [dict(w) for w in self.workers],
                "quarantined": dict(self.quarantined)}

    def summary(self) -> str:
        c, r = self.cells, self.requests
        return (f"cube {self.path}: {self.units_done}/{self.units_todo} units run this time "
                f"({self.units_total} in all, {self.units_rerun} re-run, {self.units_failed} failed); "
                f"cells ok {c.get('ok', 0)}, no_data {c.get('no_data', 0)}, failed {c.get('failed', 0)}, "
                f"pending {c.get('pending', 0)}; Earth Engine requests sent {r.get('sent', 0)} "
                f"(retried {r.get('retried', 0)}, failed {r.get('failed', 0)}, split {r.get('split', 0)}, "
                f"no imagery {r.get('no_imagery', 0)}); "
                f"{self.samples_embedded} embeddings in {self.elapsed_s:.1f}s "
                f"({self.embeddings_per_s:.1f}/s, after {self.startup_s:.1f}s loading the model)"
                + (f"\n{self.failure_line()}" if self.cells.get("failed", 0) else "")
                + "".join(f"\nquarantined GPU worker {k}: {_shorten(v)}" for k, v in self.quarantined.items()))
