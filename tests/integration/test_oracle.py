"""The correctness oracle: epd's greedy tokens equal transformers' ``generate`` on the same inputs.

Every topology and transfer backend serves the same JSONL of chat requests (1–3 images of different
sizes, text before, between and after them, system and assistant turns); all requests arrive at
once, so the language engine batches them, while transformers runs each alone.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from tests.conftest import read_results, run_epd
from tests.integration.oracle_utils import image_part, random_image

MAX_TOKENS = 12


@pytest.fixture(scope="module")
def requests_file(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("media")
    a = random_image(d / "a.png", (320, 240), 1)
    b = random_image(d / "b.jpg", (200, 400), 2)
    c = random_image(d / "c.png", (640, 360), 3)
    bodies = [
        {
            "id": "one-image",
            "messages": [{"role": "user", "content": [image_part(a), {"type": "text", "text": "What is this?"}]}],
        },
        {
            "id": "text-between",
            "messages": [
                {"role": "system", "content": "You describe pictures briefly."},
                {
                    "role": "user",
                    "content": [
                        {"type": "text", "text": "Compare"},
                        image_part(b),
                        {"type": "text", "text": "with"},
                        image_part(c),
                        {"type": "text", "text": "please."},
                    ],
                },
            ],
        },
        {
            "id": "three-images-multiturn",
            "messages": [
                {"role": "user", "content": "Hello there"},
                {"role": "assistant", "content": "Hi! Send me pictures."},
                {
                    "role": "user",
                    "content": [
                        image_part(c),
                        image_part("file://" + a),
                        image_part(b),
                        {"type": "text", "text": "Which is largest?"},
                    ],
                },
            ],
        },
        {"id": "text-only", "messages": [{"role": "user", "content": "Just some words and no picture at all."}]},
    ]
    path = d / "requests.jsonl"
    path.write_text("".join(json.dumps({**body, "max_tokens": MAX_TOKENS}) + "\n" for body in bodies))
    return path


@pytest.fixture(scope="module")
def reference(tiny_qwen25vl, requests_file) -> dict[str, list[int]]:
    """transformers' greedy tokens, one request at a time, float32 on CPU."""
    from transformers import AutoModelForImageTextToText, AutoProcessor

    from epd.frontend import to_template_messages
    from epd.media import MediaConfig, load_image

    processor = AutoProcessor.from_pretrained(tiny_qwen25vl)
    model = AutoModelForImageTextToText.from_pretrained(tiny_qwen25vl, dtype=torch.float32).eval()
    out = {}
    for line in requests_file.read_text().splitlines():
        body = json.loads(line)
        messages, media = to_template_messages(body["messages"])
        text = processor.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        local = MediaConfig(allowed_dirs=[str(requests_file.parent)])
        images = [load_image(m.source, cfg=local) for m in media] or None
        inputs = processor(text=[text], images=images, return_tensors="pt")
        with torch.inference_mode():
            ids = model.generate(**inputs, do_sample=False, max_new_tokens=body["max_tokens"])
        out[body["id"]] = ids[0, inputs["input_ids"].shape[1] :].tolist()
    return out


CASES = [
    ("colocated", "nccl"),
    ("1e1p", "nccl"),
    ("1e1p", "shm"),
    ("1e1p", "zmq"),
    ("2e1p", "nccl"),
    ("1e1p1d", "nccl"),
    ("1e1p1d", "shm"),
    ("1e1p1d", "zmq"),
    ("2e1p1d", "shm"),
]


@pytest.mark.parametrize(("topology", "transfer"), CASES, ids=[f"{t}-{b}" for t, b in CASES])
def test_epd_equals_transformers(tmp_path, tiny_qwen25vl, requests_file, reference, topology, transfer):
    run_dir = tmp_path / "run"
    run_epd(
        run_dir,
        f"+topology={topology}",
        f"transfer={transfer}",
        f"model.path={tiny_qwen25vl}",
        "workload=file",
        f"workload.path={requests_file}",
    )
    results = read_results(run_dir)
    got = {r["id"]: r for r in results["requests"]}
    assert set(got) == set(reference)
    for rid, ref in reference.items():
        assert got[rid]["error"] is None, got[rid]["error"]
        assert got[rid]["output_token_ids"] == ref, f"{rid} on {topology}/{transfer}"
    assert results["config"]["topology"]["name"] == topology
    assert results["summary"]["num_requests"] == len(reference)


def test_warmup_requests_are_served_and_left_out(tmp_path, tiny_qwen25vl, requests_file, reference):
    """``workload.warmup_requests``: the file's first request runs before the measured ones and is
    counted apart; the measured ones still equal transformers."""
    run_dir = tmp_path / "run"
    run_epd(
        run_dir,
        "+topology=colocated",
        f"model.path={tiny_qwen25vl}",
        "workload=file",
        f"workload.path={requests_file}",
        "workload.warmup_requests=1",
    )
    results = read_results(run_dir)
    first = json.loads(requests_file.read_text().splitlines()[0])["id"]
    got = {r["id"]: r for r in results["requests"]}
    assert set(got) == set(reference) - {first}
    assert all(got[rid]["output_token_ids"] == reference[rid] for rid in got)
    assert (results["summary"]["num_warmup"], results["summary"]["num_requests"]) == (1, len(reference) - 1)


# NCCL cannot connect two ranks on one GPU: its cases need a GPU per rank
GPU_CASES = [
    ("colocated", "nccl"),
    ("1e1p", "shm"),
    ("1e1p", "zmq"),
    ("2e1p", "shm"),
    ("1e1p", "nccl"),
    ("2e1p", "nccl"),
    ("1e1p1d", "shm"),
]


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize(("topology", "transfer"), GPU_CASES, ids=[f"{t}-{b}" for t, b in GPU_CASES])
def test_epd_on_gpu_equals_transformers(tmp_path, tiny_qwen25vl, requests_file, reference, topology, transfer):
    """Same oracle with the ranks on GPUs (float32, so NCCL and CUDA IPC carry the embeddings)."""
    world = {"colocated": 1, "1e1p": 2, "2e1p": 3, "1e1p1d": 3}[topology]
    if transfer == "nccl" and world > torch.cuda.device_count():
        pytest.skip(f"nccl with {topology} needs {world} GPUs")
    run_dir = tmp_path / "run"
    run_epd(
        run_dir,
        f"+topology={topology}",
        f"transfer={transfer}",
        f"model.path={tiny_qwen25vl}",
        "model.dtype=float32",
        "device=cuda",
        "workload=file",
        f"workload.path={requests_file}",
    )
    got = {r["id"]: r for r in read_results(run_dir)["requests"]}
    for rid, ref in reference.items():
        assert got[rid]["error"] is None, got[rid]["error"]
        assert got[rid]["output_token_ids"] == ref, f"{rid} on {topology}/{transfer} (cuda)"
