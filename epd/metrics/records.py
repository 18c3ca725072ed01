"""RequestRecord: what the frontend measured about one request, and reading records back."""

from __future__ import annotations

import json
from pathlib import Path

import msgspec


class RequestRecord(msgspec.Struct, kw_only=True):
    """One request as the frontend saw it. Times are wall-clock seconds (`time.time()`).

    `timestamps` maps a stage name to the time it was reached ("tokenized", "encode_start",
    "encode_end", "transfer_end", "prefill_start", "first_token", "finished", ...); any stage may
    be missing. `token_times[i]` is when output token i reached the frontend (tokens that arrive
    together share a time). A record with `error` set failed; `warmup` records are left out of
    every statistic.
    """

    id: str
    arrival: float
    """When the request entered the frontend (its TTFT and E2E start here)."""
    timestamps: dict[str, float] = {}
    token_times: list[float] = []
    output_token_ids: list[int] = []
    output_text: str = ""
    num_prompt_tokens: int = 0
    error: str | None = None
    finish_reason: str | None = None
    """``stop`` (EOS, a stop token or stop string), ``length``, ``error``."""
    num_cached_tokens: int = 0
    """Prompt tokens the language engine's prefix cache served."""
    num_preemptions: int = 0
    """Times the language engine preempted the request (and recomputed it)."""
    warmup: bool = False
    phase: int = 0
    """Load phase of the request (`workload.phase_rates`); 0 when the run has one phase."""
    items: list[dict] = []
    """One entry per media item: modality and the encoder rank it was assigned to."""
    kv_transfer_bytes: int = 0
    """Bytes of KV cache moved from its prefill to its decode instance (0 without the split)."""
    ttft_ms: float | None = None
    """Time to first token (set when the request ends; None without tokens)."""
    tpot_ms: float | None = None
    """Mean time per output token after the first (None with fewer than two tokens)."""
    e2e_ms: float | None = None
    """Arrival to last token (None without tokens)."""

    @property
    def num_output_tokens(self) -> int:
        """Output tokens produced (the ids when recorded, else one per token time)."""
        return len(self.output_token_ids) or len(self.token_times)


def stamp_latencies(record: RequestRecord) -> None:
    """Fill the record's ``ttft_ms``, ``tpot_ms`` and ``e2e_ms`` from its token times."""
    times = record.token_times
    if not times:
        record.ttft_ms = record.tpot_ms = record.e2e_ms = None
        return
    n = record.num_output_tokens
    record.ttft_ms = (times[0] - record.arrival) * 1e3
    record.e2e_ms = (times[-1] - record.arrival) * 1e3
    record.tpot_ms = (times[-1] - times[0]) * 1e3 / (n - 1) if n > 1 else None


def record_to_dict(record: RequestRecord) -> dict:
    """A record as plain JSON-able builtins (every field)."""
    return msgspec.to_builtins(record)


def load_records(path: Path) -> list[RequestRecord]:
    """Records from a run's results.json, its records.jsonl, or the run directory."""
    path = Path(path)
    if path.is_dir():
        path = path / "results.json"
    if path.suffix == ".jsonl":
        rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    else:
        rows = json.loads(path.read_text())["requests"]
    return [msgspec.convert(row, RequestRecord) for row in rows]
