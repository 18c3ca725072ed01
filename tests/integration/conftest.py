"""Fixtures shared by the integration tests: the oracle's chat requests and transformers' tokens for them."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

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
