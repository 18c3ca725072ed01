"""The wandb logger: the run directory's files (as jsonl writes them) plus a Weights & Biases run.

``logger=wandb`` logs, from the frontend only (one process per job): the resolved config as the
run's config (nested, so a W&B sweep parameter is named like the Hydra key, e.g.
``workload.request_rate``), the summary flattened into the run's summary (``ttft_ms/p50``,
``breakdown_ms/encode/mean``, ``phases/1/goodput``), and a ``requests`` table with one row per
request (latencies, token counts, error, per-stage breakdown). The mode is "offline" unless the
config says otherwise (``logger.options.mode=online``, or ``WANDB_MODE`` in the environment,
which ``epd/conf/logger/wandb.yaml`` reads); offline runs land in ``<run_dir>/wandb/`` and upload
later with ``wandb sync``. The run is finished when the logger closes, which the frontend does
in a ``finally`` (``with build_logger(...)``), with a failing exit code if the run raised.
"""

from __future__ import annotations

import importlib.util
import inspect
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from epd.metrics.breakdown import STAGES, request_breakdown
from epd.metrics.loggers import LOGGERS
from epd.metrics.loggers.base import MetricsLogger, to_jsonable
from epd.metrics.loggers.jsonl import JsonlLogger
from epd.metrics.records import RequestRecord
from epd.metrics.summary import request_latencies

MODES = ("offline", "online", "disabled", "shared")
TABLE_COLUMNS = (
    "id",
    "phase",
    "arrival_s",
    "ttft_ms",
    "tpot_ms",
    "e2e_ms",
    "num_prompt_tokens",
    "num_output_tokens",
    "error",
    *(f"{stage}_ms" for stage in STAGES),
)


@LOGGERS.register("wandb")
class WandbLogger(MetricsLogger):
    """results.json etc. in `run_dir`, and the same run in W&B (see the module docstring).

    Options (``logger.options.<key>``): project ("epd"), entity, group, name (default
    "<topology>-r<rate>"), tags, notes, job_type, mode ("offline"), requests_table (True).
    """

    @classmethod
    def check_options(cls, options: Mapping[str, Any]) -> None:
        if importlib.util.find_spec("wandb") is None:
            raise ValueError("logger=wandb needs the wandb package: pip install wandb (or pip install -e '.[wandb]')")
        mode = options.get("mode", "offline")
        if mode not in MODES:
            raise ValueError(f"logger.options.mode={mode!r}: choose one of {list(MODES)}")
        known = set(inspect.signature(cls.__init__).parameters) - {"self", "run_dir"}
        unknown = sorted(set(options) - known)
        if unknown:
            raise ValueError(f"logger.options.{unknown[0]} is not an option of logger=wandb; known: {sorted(known)}")

    def __init__(
        self,
        run_dir: Path,
        *,
        project: str = "epd",
        entity: str | None = None,
        group: str | None = None,
        name: str | None = None,
        tags: Sequence[str] = (),
        notes: str | None = None,
        job_type: str | None = None,
        mode: str = "offline",
        requests_table: bool = True,
    ) -> None:
        if mode not in MODES:
            raise ValueError(f"logger.options.mode={mode!r}: choose one of {list(MODES)}")
        self.files = JsonlLogger(run_dir)
        self.run_dir = Path(run_dir)
        self.init_kwargs = {
            "project": project,
            "entity": entity,
            "group": group,
            "name": name,
            "tags": list(tags) or None,
            "notes": notes,
            "job_type": job_type,
            "mode": mode,
        }
        self.requests_table = requests_table
        self.run: Any = None

    def log(self, metrics: Mapping[str, float], step: int | None = None) -> None:
        self.files.log(metrics, step)
        self._ensure_run({}).log(dict(metrics), step=step)

    def log_run(self, config: Any, summary: dict, records: Sequence[RequestRecord]) -> None:
        self.files.log_run(config, summary, records)
        config = to_jsonable(config)
        run = self._ensure_run(config)
        run.config.update(config, allow_val_change=True)
        run.summary.update(flatten_summary(summary))
        if self.requests_table:
            import wandb

            measured = [record for record in records if not record.warmup]
            first = min((record.arrival for record in measured), default=0.0)
            rows = [request_row(record, first) for record in measured]
            table = wandb.Table(columns=list(TABLE_COLUMNS), data=[[row[c] for c in TABLE_COLUMNS] for row in rows])
            run.log({"requests": table})

    def close(self, exit_code: int = 0) -> None:
        self.files.close()
        if self.run is not None:
            run, self.run = self.run, None
            run.finish(exit_code=exit_code)

    def __exit__(self, exc_type: object, *exc_info: object) -> None:
        self.close(exit_code=1 if exc_type is not None else 0)

    def _ensure_run(self, config: dict) -> Any:
        if self.run is None:
            import wandb

            kwargs = dict(self.init_kwargs)
            kwargs["name"] = kwargs["name"] or default_run_name(config)
            self.run_dir.mkdir(parents=True, exist_ok=True)
            self.run = wandb.init(
                dir=str(self.run_dir),
                config=config,
                settings=wandb.Settings(console="off"),
                reinit="create_new",
                **kwargs,
            )
        return self.run


def default_run_name(config: dict) -> str | None:
    """ "<topology>-r<rate>" from a resolved config, e.g. "2e1p-r0.3"; None when it has neither."""
    topology = (config.get("topology") or {}).get("name")
    rate = (config.get("workload") or {}).get("request_rate")
    if topology is None:
        return None
    return f"{topology}-r{rate}" if rate is not None else str(topology)


def flatten_summary(summary: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested summary → {"a/b/c": number or string}; lists index their items, None values and the
    free-text `errors` mapping are left out (its messages are not metric names)."""
    out: dict[str, Any] = {}
    for key, value in summary.items():
        name = f"{prefix}{key}"
        if key == "errors" and not prefix:
            out["num_error_kinds"] = len(value or {})
        elif isinstance(value, Mapping):
            out.update(flatten_summary(value, f"{name}/"))
        elif isinstance(value, list | tuple):
            out.update(flatten_summary({str(i): v for i, v in enumerate(value)}, f"{name}/"))
        elif value is not None:
            out[name] = to_jsonable(value)
    return out


def request_row(record: RequestRecord, first_arrival: float = 0.0) -> dict[str, Any]:
    """One row of the `requests` table (see `TABLE_COLUMNS`): `arrival_s` counts from `first_arrival`,
    stages a request skipped are 0."""
    latencies = request_latencies(record)
    stages = request_breakdown(record)
    row = {
        "id": record.id,
        "phase": record.phase,
        "arrival_s": record.arrival - first_arrival,
        "ttft_ms": latencies["ttft_ms"],
        "tpot_ms": latencies["tpot_ms"],
        "e2e_ms": latencies["e2e_ms"],
        "num_prompt_tokens": record.num_prompt_tokens,
        "num_output_tokens": record.num_output_tokens,
        "error": record.error or "",
    }
    row.update({f"{stage}_ms": stages.get(stage, 0.0) for stage in STAGES})
    return row
