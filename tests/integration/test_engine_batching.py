"""Requests batched together in the language engine give the same tokens as each one alone."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from epd.language import EngineConfig, LanguageEngine
from epd.models import MediaInput, detect_family
from epd.protocol import ItemRef, NewRequest, SamplingParams


@pytest.fixture(scope="module")
def roles(tiny_qwen25vl):
    family = detect_family(tiny_qwen25vl)
    cpu = torch.device("cpu")
    encoder = family.load_encoder(tiny_qwen25vl, False, cpu, torch.float32)
    side = family.load_language(tiny_qwen25vl, False)
    return side, encoder


def _requests(side) -> list[tuple[NewRequest, list]]:
    rng = np.random.default_rng(0)
    span = side.placeholder_span("image")
    reqs = []
    for i, (n_images, n_text) in enumerate([(0, 9), (1, 5), (2, 17), (1, 3)]):
        images = [Image.fromarray(rng.integers(0, 256, (56 * (j + 2), 84, 3), dtype=np.uint8)) for j in range(n_images)]
        prompt = rng.integers(0, 600, n_text).tolist()
        for _ in images:
            at = int(rng.integers(0, len(prompt) + 1))
            prompt[at:at] = span
        refs = [ItemRef(index=j, modality="image", encoder_rank=0) for j in range(n_images)]
        sampling = SamplingParams(max_tokens=6 + i, ignore_eos=True)
        reqs.append((NewRequest(request_id=f"r{i}", prompt_token_ids=prompt, items=refs, sampling=sampling), images))
    return reqs


def _serve(side, encoder, reqs, cfg: EngineConfig) -> tuple[dict[str, list[int]], int]:
    engine = LanguageEngine(side, cfg, torch.device("cpu"))
    for req, images in reqs:
        engine.add_request(req)
        inputs = [MediaInput(modality="image", data=img) for img in images]
        for j, item in enumerate(encoder.encode(inputs) if inputs else []):
            engine.add_item(req.request_id, j, item.meta, item.tensors, None, {})
    tokens: dict[str, list[int]] = {}
    widest = 0
    while engine.has_work:
        outs = engine.step()
        widest = max(widest, len(outs))
        for out in outs:
            assert out.error is None
            tokens.setdefault(out.request_id, []).extend(out.token_ids)
    return tokens, widest


def test_batched_equals_alone(roles):
    side, encoder = roles
    reqs = _requests(side)
    together, widest = _serve(side, encoder, reqs, EngineConfig())
    assert widest == len(reqs), "all requests should have shared engine steps"
    for req, images in reqs:
        alone, _ = _serve(side, encoder, [(req, images)], EngineConfig())
        assert together[req.request_id] == alone[req.request_id]
        assert len(alone[req.request_id]) == req.sampling.max_tokens


def test_token_budget_staggers_prefills_without_changing_tokens(roles):
    side, encoder = roles
    reqs = _requests(side)
    wide, _ = _serve(side, encoder, reqs, EngineConfig())
    narrow, widest = _serve(side, encoder, reqs, EngineConfig(max_batch_tokens=40, max_num_seqs=2))
    assert widest <= 2
    assert narrow == wide


def test_items_of_a_failed_request_are_dropped(roles):
    side, encoder = roles
    req, images = _requests(side)[2]  # two images
    engine = LanguageEngine(side, EngineConfig(), torch.device("cpu"))
    engine.add_request(req)
    engine.add_item(req.request_id, 1, None, None, "cannot decode image x.png", {})
    (out,) = engine.step()
    assert out.finished and "media item 1: cannot decode image x.png" in out.error
    item = encoder.encode([MediaInput(modality="image", data=images[0])])[0]
    engine.add_item(req.request_id, 0, item.meta, item.tensors, None, {})  # arrives after the failure
    assert not engine.has_work and not engine._early_items
