"""``logger=wandb``: an offline W&B run whose config, summary and per-request table read back from its files."""

from __future__ import annotations

import json
import struct
from pathlib import Path

import pytest

pytest.importorskip("wandb")

from hydra import compose, initialize_config_dir  # noqa: E402
from omegaconf import OmegaConf  # noqa: E402

from epd.config import build_run_config  # noqa: E402
from epd.metrics import LoggerConfig, RequestRecord, build_logger, summarize  # noqa: E402
from epd.run import CONF_DIR  # noqa: E402

BLOCK = 32 * 1024  # the .wandb file is a LevelDB-style log: 32 KiB blocks of checksummed chunks
FULL, FIRST, MIDDLE, LAST = 1, 2, 3, 4


def wandb_records(path: Path) -> list:
    """Every protobuf Record of an offline run's .wandb file."""
    from wandb.proto import wandb_internal_pb2 as pb

    data = path.read_bytes()
    assert data[:4] == b":W&B", "not a W&B transaction log"
    pos, pending, out = 7, b"", []  # header: magic (4), version magic (2), version (1)
    while pos + 7 <= len(data):
        left = BLOCK - pos % BLOCK
        if left < 7:  # block trailer too small for a chunk header: zero padding
            pos += left
            continue
        _crc, length, kind = struct.unpack("<IHB", data[pos : pos + 7])
        if kind == 0 and length == 0:
            pos += left
            continue
        chunk = data[pos + 7 : pos + 7 + length]
        pos += 7 + length
        pending = chunk if kind in (FULL, FIRST) else pending + chunk
        if kind in (FULL, LAST):
            record = pb.Record()
            record.ParseFromString(pending)
            out.append(record)
    return out


def flush_wandb() -> None:
    """W&B's service writes the run's file after `finish` returns; a process exit (the frontend's) or
    `teardown` waits for it. A test that reads the file in the process that logged calls this first."""
    import wandb

    wandb.teardown()


def read_offline_run(run_dir: Path) -> dict:
    """{"config": {...}, "summary": {...}, "tables": {name: rows as dicts}} of the one offline run in run_dir."""
    (run_path,) = sorted((run_dir / "wandb").glob("offline-run-*"))
    (log_file,) = run_path.glob("run-*.wandb")
    config, summary = {}, {}
    for record in wandb_records(log_file):
        kind = record.WhichOneof("record_type")
        if kind == "run":
            config.update({item.key: json.loads(item.value_json) for item in record.run.config.update})
        elif kind == "config":
            config.update({item.key: json.loads(item.value_json) for item in record.config.update})
        elif kind == "summary":
            for item in record.summary.update:
                key = item.key or "/".join(item.nested_key)
                summary[key] = json.loads(item.value_json)
    tables = {}
    for table_file in (run_path / "files" / "media" / "table").glob("*.table.json"):
        table = json.loads(table_file.read_text())
        tables[table_file.name.split("_")[0]] = [dict(zip(table["columns"], row, strict=True)) for row in table["data"]]
    return {"config": config, "summary": summary, "tables": tables}


@pytest.fixture(autouse=True)
def hermetic_wandb(tmp_path, monkeypatch):
    for var in ("WANDB_DIR", "WANDB_CONFIG_DIR", "WANDB_CACHE_DIR", "WANDB_DATA_DIR"):
        monkeypatch.setenv(var, str(tmp_path / "wandb-home" / var.lower()))
    monkeypatch.delenv("WANDB_MODE", raising=False)
    monkeypatch.delenv("WANDB_API_KEY", raising=False)


def test_logger_wandb_composes_offline_by_default():
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        cfg = build_run_config(OmegaConf.to_container(compose("config", ["logger=wandb"]), resolve=True))
        assert cfg.logger.name == "wandb" and cfg.logger.options["mode"] == "offline"
        online = compose("config", ["logger=wandb", "logger.options.mode=online", "logger.options.project=p"])
        assert online.logger.options.mode == "online" and online.logger.options.project == "p"


def test_offline_run_reads_back(tmp_path):
    records = [
        RequestRecord(
            id=f"r{i}",
            arrival=10.0 + i,
            timestamps={"tokenized": 10.0 + i + 0.01, "encode_end": 10.0 + i + 0.2, "first_token": 10.0 + i + 0.3},
            token_times=[10.0 + i + 0.3, 10.0 + i + 0.35, 10.0 + i + 0.40],
            output_token_ids=[7, 8, 9],
            num_prompt_tokens=20 + i,
        )
        for i in range(3)
    ]
    records.append(RequestRecord(id="bad", arrival=13.0, error="media item 0: no such file"))
    records.append(RequestRecord(id="w", arrival=1.0, token_times=[1.5], warmup=True))
    summary = summarize(records, duration_s=4.0, slo_ttft_ms=250.0)
    config = {"topology": {"name": "2e1p"}, "workload": {"request_rate": 0.3, "seed": 5}, "device": "cpu"}
    run_dir = tmp_path / "run"
    cfg = LoggerConfig(name="wandb", options={"mode": "offline", "project": "epd-test", "tags": ["unit"]})
    with build_logger(cfg, run_dir) as logger:
        logger.log({"requests_done": 2.0}, step=1)
        logger.log_run(config, summary, records)

    flush_wandb()
    logged = read_offline_run(run_dir)
    assert logged["config"]["workload"] == {"request_rate": 0.3, "seed": 5}
    assert logged["config"]["topology"] == {"name": "2e1p"}
    got = logged["summary"]
    assert got["ttft_ms/mean"] == pytest.approx(summary["ttft_ms"]["mean"]) == pytest.approx(300.0)
    assert got["tpot_ms/p99"] == pytest.approx(50.0)
    assert got["num_failed"] == 1 and got["num_requests"] == 4
    assert got["slo_attainment"] == pytest.approx(0.0) and got["goodput"] == 0.0
    assert got["breakdown_ms/encode/mean"] == pytest.approx(190.0)
    assert got["num_error_kinds"] == 1
    rows = logged["tables"]["requests"]
    assert [row["id"] for row in rows] == ["r0", "r1", "r2", "bad"]  # warmup left out
    assert rows[1]["ttft_ms"] == pytest.approx(300.0) and rows[1]["arrival_s"] == pytest.approx(1.0)
    assert rows[2]["num_prompt_tokens"] == 22 and rows[3]["error"] == "media item 0: no such file"
    assert rows[0]["encode_ms"] == pytest.approx(190.0) and rows[0]["decode_ms"] == pytest.approx(100.0)
    # the run directory's files are written as with logger=jsonl
    results = json.loads((run_dir / "results.json").read_text())
    assert results["summary"]["ttft_ms"]["mean"] == pytest.approx(300.0)


def test_run_is_finished_even_when_logging_fails(tmp_path):
    cfg = LoggerConfig(name="wandb", options={"mode": "offline"})
    logger = build_logger(cfg, tmp_path / "run")
    with pytest.raises(RuntimeError, match="boom"), logger:
        logger.log({"x": 1.0}, step=0)
        raise RuntimeError("boom")
    assert logger.run is None  # finished in __exit__
    flush_wandb()
    log_file = next((tmp_path / "run" / "wandb").glob("offline-run-*/run-*.wandb"))
    exits = [r.exit.exit_code for r in wandb_records(log_file) if r.WhichOneof("record_type") == "exit"]
    assert exits == [1]


def test_options_are_checked_with_the_config():
    with pytest.raises(ValueError, match="logger.options.projekt is not an option of logger=wandb"):
        LoggerConfig(name="wandb", options={"projekt": "x"})
    with pytest.raises(ValueError, match="logger.options.mode='sometimes'"):
        LoggerConfig(name="wandb", options={"mode": "sometimes"})
