"""Sampling options end to end: OpenAI ``stop`` strings end a request early (the language rank is told
to drop it), seeded top-k/top-p sampling repeats, and the engine's counters reach the results."""

from __future__ import annotations

import json

from tests.conftest import read_results, run_epd


def _bodies(extra: dict) -> list[dict]:
    system = {"role": "system", "content": "You are a careful assistant who answers in full sentences."}
    return [
        {
            "id": f"q{i}",
            "max_tokens": 16,
            "ignore_eos": True,
            "messages": [system, {"role": "user", "content": text}],
            **extra,
        }
        for i, text in enumerate(["Name three colours.", "Count to five please."])
    ]


def _run(tmp_path, name: str, bodies: list[dict], model: str) -> dict[str, dict]:
    path = tmp_path / f"{name}.jsonl"
    path.write_text("".join(json.dumps(b) + "\n" for b in bodies))
    run_dir = tmp_path / name
    run_epd(run_dir, f"model.path={model}", "workload=file", f"workload.path={path}")
    return {r["id"]: r for r in read_results(run_dir)["requests"]}


def test_stop_strings_and_seeded_sampling(tmp_path, tiny_qwen25vl):
    plain = _run(tmp_path, "plain", _bodies({}), tiny_qwen25vl)
    text = plain["q0"]["output_text"]
    assert plain["q0"]["finish_reason"] == "length" and len(plain["q0"]["output_token_ids"]) == 16
    assert len(text) > 6
    stop = text[len(text) // 2 : len(text) // 2 + 2]  # a piece from the middle of q0's answer
    sampled = {"temperature": 1.0, "top_p": 0.9, "top_k": 50, "seed": 7}
    bodies = [{**_bodies({})[0], "stop": [stop]}, {**_bodies(sampled)[1]}]
    first = _run(tmp_path, "stop", bodies, tiny_qwen25vl)
    again = _run(tmp_path, "again", bodies, tiny_qwen25vl)
    q0 = first["q0"]
    assert q0["finish_reason"] == "stop" and q0["error"] is None
    assert q0["output_text"] == text[: text.find(stop)]
    assert len(q0["output_token_ids"]) < 16
    assert first["q1"]["output_token_ids"] == again["q1"]["output_token_ids"]  # same seed, same tokens
    assert first["q1"]["output_token_ids"] != plain["q1"]["output_token_ids"]  # sampled, not greedy
    # the engine's counters reach the results (their values are checked in tests/engine)
    assert all(r["num_preemptions"] == 0 and r["num_cached_tokens"] >= 0 for r in plain.values())
