"""Per-item encoder facts for the request records, and the console table of the per-encoder summary."""

from __future__ import annotations

from epd.protocol.messages import ItemDone


def item_stats(msg: ItemDone) -> dict:
    """What ``RequestRecord.items[i]`` gains from the encoder's report (times in ms, stamps in s).

    ``queue_ms`` is time spent waiting, not worked on: for a decoded item, waiting for a decode
    thread plus waiting for the tower after its decode and processing; for one that joined an identical item in
    flight, its whole stay; 0 for a cache hit.
    """
    ts = msg.timestamps
    arrived = ts.get("encode_queue_start")
    out = {
        "num_tokens": msg.num_tokens,
        "cache": msg.cache,
        "batch_id": msg.batch_id,
        "batch_size": msg.batch_size,
        "batch_tokens": msg.batch_tokens,
        "queue_ms": 0.0,
        "decode_ms": None,
        "preprocess_ms": None,
        "tower_ms": None,
        "encode_start": ts.get("encode_start"),
        "encode_end": ts.get("encode_end"),
    }
    if msg.error is not None:
        out["error"] = msg.error
    if arrived is None:
        return out
    if "fetch_start" in ts and "fetch_end" in ts:
        out["decode_ms"] = (ts["fetch_end"] - ts["fetch_start"]) * 1e3
        worked = ts["fetch_end"]
        if "preprocess_end" in ts:  # the processor ran on the decode thread right after the fetch
            out["preprocess_ms"] = (ts["preprocess_end"] - ts["fetch_end"]) * 1e3
            worked = ts["preprocess_end"]
        out["queue_ms"] = (ts["fetch_start"] - arrived) * 1e3
        if "encode_start" in ts:
            out["queue_ms"] += (ts["encode_start"] - worked) * 1e3
    elif msg.cache == "inflight" and "encode_end" in ts:
        out["queue_ms"] = (ts["encode_end"] - arrived) * 1e3
    if "encode_start" in ts and "encode_end" in ts:
        out["tower_ms"] = (ts["encode_end"] - ts["encode_start"]) * 1e3
    return out


def format_encoder_table(summary: dict) -> str:
    """One line per encoder rank: items, utilisation, queue time, batch size, cache hit rate."""
    lines = ["encoder  items  tokens  util   queue ms mean/p90   batches  items/batch mean/max  cache hits"]
    for rank, enc in summary["encoders"].items():
        queue, batch = enc["queue_ms"], enc["batch_size"]
        lines.append(
            f"  {rank:>5}  {enc['items']:>5}  {enc['tokens']:>6}  {enc['utilization']:>5.1%}  "
            f"{_ms(queue['mean']):>8} / {_ms(queue['p90']):<8}  {enc['batches']:>7}  "
            f"{_ms(batch['mean'], 2):>9} / {_ms(batch['max'], 0):<9}  "
            f"{enc['cache_hits']}/{enc['cache_lookups']}"
        )
    rate = summary.get("cache_hit_rate")
    lines.append(f"cache hit rate {'n/a' if rate is None else f'{rate:.1%}'}")
    return "\n".join(lines)


def _ms(value: float | None, digits: int = 1) -> str:
    return "-" if value is None else f"{value:.{digits}f}"
