"""results.json of the jsonl logger, records.jsonl appended as requests end, the null logger, environment info."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass

import pytest

from epd.metrics import (
    LoggerConfig,
    MultiLogger,
    NullLogger,
    RequestRecord,
    build_logger,
    environment_info,
    load_records,
    summarize,
)
from epd.workload import WorkloadConfig


@dataclass
class FakeRunConfig:
    workload: WorkloadConfig
    device: str = "cpu"


def make_records() -> list[RequestRecord]:
    return [
        RequestRecord(
            id="r0",
            arrival=1.0,
            timestamps={"tokenized": 1.01, "first_token": 1.2},
            token_times=[1.2, 1.3],
            output_token_ids=[5, 6],
            output_text="hi there",
            num_prompt_tokens=12,
        ),
        RequestRecord(id="r1", arrival=2.0, error="boom"),
    ]


def test_results_json_shape_and_round_trip(tmp_path):
    records = make_records()
    summary = summarize(records, duration_s=1.5)
    config = FakeRunConfig(workload=WorkloadConfig(request_rate=math.inf))
    with build_logger(LoggerConfig(), tmp_path) as logger:
        logger.log({"running": 1.0}, step=0)
        logger.log_run(config, summary, records)
    results = json.loads((tmp_path / "results.json").read_text())
    assert list(results) == ["config", "environment", "summary", "requests"]
    assert results["config"]["workload"]["request_rate"] is None  # strict JSON: inf (all at once) is null
    assert results["config"]["device"] == "cpu"
    environment = results["environment"]
    assert {"python", "torch", "transformers", "platform", "devices", "hostname"} <= set(environment)
    assert results["summary"]["num_failed"] == 1 and results["summary"]["ttft_ms"]["mean"] == pytest.approx(200.0)
    first = results["requests"][0]
    for key in ("id", "timestamps", "output_token_ids", "output_text", "num_prompt_tokens", "error"):
        assert key in first
    assert first["output_token_ids"] == [5, 6] and results["requests"][1]["error"] == "boom"
    # round trip: the text re-encodes to the same object, strictly
    assert json.loads(json.dumps(results, allow_nan=False)) == results
    assert load_records(tmp_path) == records
    assert summarize(load_records(tmp_path), 1.5) == summary
    assert json.loads((tmp_path / "metrics.jsonl").read_text())["running"] == 1.0
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]


def test_rewrite_replaces_whole_file(tmp_path):
    logger = build_logger(LoggerConfig(name="jsonl"), tmp_path)
    logger.log_run({"a": 1}, summarize(make_records(), 1.0), make_records())
    logger.log_run({"a": 2}, summarize([], 1.0), [])
    results = json.loads((tmp_path / "results.json").read_text())
    assert results["config"] == {"a": 2} and results["requests"] == []


def test_record_writer_appends_each_record_at_once(tmp_path):
    from epd.metrics.writer import RECORDS_FILE, RecordWriter

    records = make_records()
    writer = RecordWriter(tmp_path)
    writer.write(records[0])
    # on disk before the writer is closed: a process killed now keeps this record
    assert [json.loads(line)["id"] for line in (tmp_path / RECORDS_FILE).read_text().splitlines()] == ["r0"]
    writer.write(records[1])
    writer.close()
    assert load_records(tmp_path / RECORDS_FILE) == records


def test_disabled_logger_writes_nothing(tmp_path):
    logger = build_logger(LoggerConfig(), tmp_path / "run", enabled=False)
    assert isinstance(logger, NullLogger)
    logger.log({"x": 1.0})
    logger.log_run({}, {}, make_records())
    logger.close()
    assert not (tmp_path / "run").exists()


def test_multi_logger_fans_out(tmp_path):
    loggers = [build_logger(LoggerConfig(), tmp_path / name) for name in ("a", "b")]
    with MultiLogger(loggers) as logger:
        logger.log_run({}, summarize([], 1.0), [])
    assert (tmp_path / "a" / "results.json").exists() and (tmp_path / "b" / "results.json").exists()


def test_logger_config_errors():
    with pytest.raises(ValueError, match="logger.name='tensorboard'.*jsonl"):
        LoggerConfig(name="tensorboard")
    with pytest.raises(ValueError, match="takes no options"):
        build_logger(LoggerConfig(options={"project": "x"}), ".")


def test_environment_info():
    info = environment_info()
    assert info["python"].count(".") == 2 and info["torch"] and info["transformers"]
    assert isinstance(info["devices"], list) and info["devices"]
    json.dumps(info, allow_nan=False)
