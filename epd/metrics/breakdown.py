"""Per-stage breakdown of a request's end-to-end latency, from the stage timestamps it collected.

A request passes milestones in a fixed order (below). Each stage is the time from the latest
milestone reached before it to its own milestone, so the stages of one request never overlap and
add up to its end-to-end latency exactly (arrival to last token). A milestone a request lacks
(no media: no encoder stages; colocated: no transfer) folds its time into the next stage present.
Per-request timestamps of media stages are merged over the request's items (earliest start,
latest end), so for several items the breakdown follows the slowest one: the critical path.

    stage           ends at            what the request waits for
    queue           tokenized          the frontend: sent on its arrival time, chat template, tokens
    encode_queue    fetch_start        an encoder to pick up its media
    fetch           fetch_end          reading and decoding the media (image, video, audio)
    preprocess      preprocess_end     the family's HF processor, on the encoder's decode threads
    encode_queue    encode_start       a tower batch, after decoding
    encode          encode_end         the vision / audio tower
    transfer        transfer_end       the embeddings reaching the language instance
    transfer        embeddings_ready   ... and every item of the request being there
    prefill_queue   prefill_start      the language engine to schedule its prefill
    prefill         first_token        prefill and the first sampled token
    kv_transfer     kv_transfer_end    prefill/decode split: the KV cache reaching the decode instance
    decode          (last token)       every later token, as the frontend receives them
"""

from __future__ import annotations

from collections.abc import Sequence

from epd.metrics.records import RequestRecord

MILESTONES: tuple[tuple[str, str], ...] = (
    ("queue", "tokenized"),
    ("encode_queue", "fetch_start"),
    ("fetch", "fetch_end"),
    ("preprocess", "preprocess_end"),
    ("encode_queue", "encode_start"),
    ("encode", "encode_end"),
    ("transfer", "transfer_end"),
    ("transfer", "embeddings_ready"),
    ("prefill_queue", "prefill_start"),
    ("prefill", "first_token"),
    ("kv_transfer", "kv_transfer_end"),
)
STAGES: tuple[str, ...] = tuple(dict.fromkeys([stage for stage, _ in MILESTONES] + ["decode"]))
"""Every stage of the breakdown, in pipeline order."""


def request_breakdown(record: RequestRecord) -> dict[str, float]:
    """Milliseconds `record` spent in each stage it went through; empty for a request without tokens.

    The values add up to the request's end-to-end latency (arrival to last token).
    """
    if not record.token_times:
        return {}
    out: dict[str, float] = {}
    reached = record.arrival
    for stage, milestone in MILESTONES:
        time_s = record.timestamps.get(milestone)
        if time_s is None:
            continue
        out[stage] = out.get(stage, 0.0) + max(0.0, time_s - reached) * 1e3
        reached = max(reached, time_s)
    out["decode"] = max(0.0, record.token_times[-1] - reached) * 1e3
    return out


def breakdown_samples(records: Sequence[RequestRecord]) -> dict[str, list[float]]:
    """Per stage, one value (ms) per record with tokens: 0 for a record that skipped the stage, so
    the stages' means add up to the mean end-to-end latency. Stages no record went through are left out."""
    rows = [row for row in (request_breakdown(record) for record in records) if row]
    present = [stage for stage in STAGES if any(stage in row for row in rows)]
    return {stage: [row.get(stage, 0.0) for row in rows] for stage in present}
