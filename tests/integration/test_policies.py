"""Encoder-assignment policies keep epd equal to transformers, on 2 encoders, with cache hits.

One JSONL, all requests at once: a request with four images (one of them twice, under another
name), a request whose image is a ``data:`` URI of bytes another request reads from a file, two
plain ones and a text-only one. Each policy's decisions are read back from ``results.json``.
"""

from __future__ import annotations

import base64
import json
import shutil
from pathlib import Path

import pytest

from tests.conftest import read_results, run_epd
from tests.integration.oracle_utils import image_part, random_image, reference_tokens

MAX_TOKENS = 8


@pytest.fixture(scope="module")
def requests_file(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("media")
    a = random_image(d / "a.png", (320, 240), 1)
    b = random_image(d / "b.png", (200, 400), 2)
    c = random_image(d / "c.png", (640, 360), 3)
    e = random_image(d / "e.png", (256, 256), 4)
    shutil.copy(a, d / "a-copy.png")
    a_uri = "data:image/png;base64," + base64.b64encode(Path(a).read_bytes()).decode()
    bodies = {
        "many": [
            image_part(a),
            image_part(b),
            image_part(c),
            image_part(str(d / "a-copy.png")),
            {"type": "text", "text": "Which differ?"},
        ],
        "again": [{"type": "text", "text": "And this one?"}, image_part(a_uri)],
        "two": [image_part(e), image_part(b), {"type": "text", "text": "Compare."}],
        "one": [image_part(c), {"type": "text", "text": "Describe."}],
        "text-only": "No picture here, only words.",
    }
    path = d / "requests.jsonl"
    lines = [
        json.dumps({"id": rid, "max_tokens": MAX_TOKENS, "messages": [{"role": "user", "content": content}]})
        for rid, content in bodies.items()
    ]
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.fixture(scope="module")
def reference(tiny_qwen25vl, requests_file) -> dict[str, list[int]]:
    return reference_tokens(tiny_qwen25vl, requests_file)


# round_robin is what every other oracle test runs; least_loaded runs here inside the modality groups
POLICIES = {
    "split": ["+topology=2e1p", "scheduler=split"],
    "cache_affinity": ["+topology=2e1p", "scheduler=cache_affinity"],
    "modality+least_loaded": ["+topology=2e1p", "scheduler=modality", "scheduler.within_group=least_loaded"],
    "colocated": [],  # cache hits handed over in process: the language side shares the cached tensors
}


@pytest.mark.parametrize("name", list(POLICIES))
def test_policy_keeps_the_oracle_and_shows_its_decisions(tmp_path, tiny_qwen25vl, requests_file, reference, name):
    run_dir = tmp_path / "run"
    run_epd(
        run_dir,
        *POLICIES[name],
        f"model.path={tiny_qwen25vl}",
        "workload=file",
        f"workload.path={requests_file}",
    )
    results = read_results(run_dir)
    got = {r["id"]: r for r in results["requests"]}
    for rid, ref in reference.items():
        assert got[rid]["error"] is None, got[rid]["error"]
        assert got[rid]["output_token_ids"] == ref, f"{rid} under {name}"

    # text-only requests never reach an encoder; every media item was reported by the encoder it was sent to
    assert got["text-only"]["items"] == []
    encoders = {r: enc for r, enc in results["summary"]["encoders"].items()}
    assert sum(enc["items"] for enc in encoders.values()) == 8
    items = [it for rec in got.values() for it in rec["items"]]
    assert all(
        it["cache"] in ("miss", "device", "host", "inflight") and it["encoder"] in encoders_of(name) for it in items
    )
    assert results["summary"]["cache_hit_rate"] is not None
    assert all(it["num_tokens"] > 0 for it in items)
    assert all(0 < enc["utilization"] <= 1 and enc["batches"] >= 1 for enc in encoders.values())

    used = {rid: {it["encoder"] for it in rec["items"]} for rid, rec in got.items()}
    if name == "modality+least_loaded":
        assert all(len(ranks) <= 1 for ranks in used.values())  # the request is the unit
    if name == "split":
        assert used["many"] == {0, 1} and used["two"] == {0, 1}
    if name in ("cache_affinity", "colocated"):  # a.png, a-copy.png and a data: URI of it: one content hash
        a_items = [got["many"]["items"][0], got["many"]["items"][3], got["again"]["items"][0]]
        assert len({it["encoder"] for it in a_items}) == 1
        assert sum(it["cache"] != "miss" for it in a_items) == 2  # encoded once, served twice


def encoders_of(name: str) -> tuple[int, ...]:
    return (0,) if name == "colocated" else (0, 1)
