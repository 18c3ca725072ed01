"""The language engine's mechanisms keep transformers' greedy tokens: chunked prefill (tiny chunks),
preemption with recompute (tiny KV cache), prefix-cache hits (repeated prompts and images), batching,
on Qwen2.5-VL (sectioned M-RoPE) and Qwen3-VL (interleaved M-RoPE + DeepStack), in one process.

The reference runs transformers' ``generate`` on the same expanded prompt and pixel inputs, alone.
"""

from __future__ import annotations

import gc
import hashlib

import numpy as np
import pytest
import torch
from PIL import Image

from epd.language import EngineConfig, LanguageEngine
from epd.models import MediaInput, detect_family
from epd.protocol import ItemRef, NewRequest, SamplingParams
from epd.tiny import cached_tiny

FAMILIES = ["qwen2_5_vl", "qwen3_vl"]
CPU = torch.device("cpu")


@pytest.fixture(scope="module", params=FAMILIES)
def family_setup(request):
    from transformers import AutoModelForImageTextToText

    ckpt = cached_tiny(request.param)
    family = detect_family(ckpt)
    encoder = family.load_encoder(ckpt, False, CPU, torch.float32)
    side = family.load_language(ckpt, False)
    hf = AutoModelForImageTextToText.from_pretrained(ckpt, dtype=torch.float32).eval()
    return side, encoder, hf


def _images(seed: int, n: int) -> list[Image.Image]:
    rng = np.random.default_rng(seed)
    return [Image.fromarray(rng.integers(0, 256, (56 * (j + 2), 84, 3), dtype=np.uint8)) for j in range(n)]


def _request(rid: str, side, prefix: list[int], images: list[Image.Image], suffix: list[int], max_tokens: int):
    span = side.placeholder_span("image")
    prompt = list(prefix)
    for _ in images:
        prompt += span + [17]
    prompt += suffix
    refs = [ItemRef(index=j, modality="image", encoder_rank=0) for j in range(len(images))]
    sampling = SamplingParams(max_tokens=max_tokens, ignore_eos=True)
    return NewRequest(request_id=rid, prompt_token_ids=prompt, items=refs, sampling=sampling), images


def _encoded(encoder, images):
    items = encoder.encode([MediaInput(modality="image", data=img) for img in images]) if images else []
    for item, img in zip(items, images, strict=True):  # what the encoder role adds from the frontend's hash
        item.meta.info["content_hash"] = hashlib.sha256(img.tobytes()).hexdigest()
    return items


def _reference(side, encoder, hf, req: NewRequest, images) -> list[int]:
    items = _encoded(encoder, images)
    ids, types = side.expand(req.prompt_token_ids, [it.meta for it in items])
    kwargs = {}
    if images:
        feats = [
            encoder.processor(text=["<|vision_start|><|image_pad|><|vision_end|>"], images=[img], return_tensors="pt")
            for img in images
        ]
        kwargs = {
            "pixel_values": torch.cat([f["pixel_values"] for f in feats]),
            "image_grid_thw": torch.cat([f["image_grid_thw"] for f in feats]),
            "mm_token_type_ids": types[None].long(),
        }
    with torch.inference_mode():
        out = hf.generate(
            input_ids=ids[None],
            attention_mask=torch.ones(1, ids.numel(), dtype=torch.long),
            do_sample=False,
            max_new_tokens=req.sampling.max_tokens,
            eos_token_id=None,
            **kwargs,
        )
    return out[0, ids.numel() :].tolist()


def _serve(side, encoder, reqs, cfg: EngineConfig, one_by_one: bool = False):
    """Tokens per request id, and the engine (for its counters)."""
    engine = LanguageEngine(side, cfg, CPU)
    tokens: dict[str, list[int]] = {}
    finals = {}

    def drain():
        while engine.has_work:
            for out in engine.step():
                assert out.error is None, out.error
                tokens.setdefault(out.request_id, []).extend(out.token_ids)
                if out.finished:
                    finals[out.request_id] = out

    for req, images in reqs:
        engine.add_request(req)
        for j, item in enumerate(_encoded(encoder, images)):
            engine.add_item(req.request_id, j, item.meta, item.tensors, None, {})
        if one_by_one:
            drain()
    drain()
    return tokens, finals, engine


def _workload(side):
    rng = np.random.default_rng(3)
    system = rng.integers(0, 600, 23).tolist()  # a shared "system prompt" prefix
    return [
        _request("two-images", side, system, _images(1, 2), [5, 6, 7], 7),
        _request("text-only", side, system, [], rng.integers(0, 600, 9).tolist(), 9),
        _request("one-image", side, system, _images(2, 1), rng.integers(0, 600, 30).tolist(), 6),
        _request("same-images-again", side, system, _images(1, 2), [8, 9], 8),
    ]


@pytest.fixture(scope="module")
def references(family_setup):
    side, encoder, hf = family_setup
    return {req.request_id: _reference(side, encoder, hf, req, imgs) for req, imgs in _workload(side)}


def test_batched(family_setup, references):
    side, encoder, _ = family_setup
    tokens, _, _ = _serve(side, encoder, _workload(side), EngineConfig())
    assert tokens == references


def test_chunked_prefill(family_setup, references):
    side, encoder, _ = family_setup
    tokens, _, engine = _serve(side, encoder, _workload(side), EngineConfig(max_batch_tokens=7, block_size=4))
    assert tokens == references
    assert engine.steps > sum(len(req.prompt_token_ids) for req, _ in _workload(side)) // 7  # chunks really ran


def test_preemption_recomputes(family_setup, references):
    side, encoder, _ = family_setup
    reqs = _workload(side)
    lengths = [
        side.expand(r.prompt_token_ids, [it.meta for it in _encoded(encoder, imgs)])[0].numel() for r, imgs in reqs
    ]
    # room for the longest sequence alone (prompt + output), not for all of them: small chunks admit
    # several at once, and as they grow the newest is preempted
    cfg = EngineConfig(kv_tokens=max(lengths) + 12, block_size=4, prefix_cache=False, max_batch_tokens=8)
    tokens, finals, _ = _serve(side, encoder, reqs, cfg)
    assert tokens == references
    assert sum(out.num_preemptions for out in finals.values()) > 0, "the tiny cache should have forced preemption"


def test_prefix_cache_hits(family_setup, references):
    side, encoder, _ = family_setup
    reqs = _workload(side)
    tokens, finals, engine = _serve(side, encoder, reqs, EngineConfig(block_size=4), one_by_one=True)
    assert tokens == references
    # every later request shares the 23-token system prefix; the last repeats the first one's two images
    assert finals["text-only"].num_cached_tokens >= 20
    two = finals["two-images"].num_prompt_tokens
    assert finals["same-images-again"].num_cached_tokens >= two - 8, "the repeated images should have hit"
    assert finals["one-image"].num_cached_tokens < 23 + 8, "a different image must not hit"


def test_prefix_cache_off_gives_no_hits(family_setup, references):
    side, encoder, _ = family_setup
    tokens, finals, _ = _serve(side, encoder, _workload(side), EngineConfig(prefix_cache=False), one_by_one=True)
    assert tokens == references
    assert all(out.num_cached_tokens == 0 for out in finals.values())


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("knobs", [{}, {"max_batch_tokens": 7, "block_size": 4}], ids=["whole", "chunked"])
def test_on_gpu_float32(family_setup, references, knobs):
    """The GPU paths (cuda attention, Triton decode, CUDA graphs) in float32 give the CPU reference's tokens."""
    side, encoder, _ = family_setup
    engine = LanguageEngine(side, EngineConfig(**knobs), torch.device("cuda"), torch.float32)
    engine.warm_up()
    assert engine.runner.graphs, "decode should run through CUDA graphs"
    tokens: dict[str, list[int]] = {}
    for req, images in _workload(side):
        engine.add_request(req)
        for j, item in enumerate(_encoded(encoder, images)):
            engine.add_item(req.request_id, j, item.meta, item.tensors, None, {})
    while engine.has_work:
        for out in engine.step():
            assert out.error is None, out.error
            tokens.setdefault(out.request_id, []).extend(out.token_ids)
    del engine  # give the KV cache back before later tests start their own ranks on this GPU
    gc.collect()
    torch.cuda.empty_cache()
    assert tokens == references


def test_encode_prefill_overlap(family_setup, references):
    """With overlap on, the text and items before a missing item are prefilled while it is still
    encoding; no token comes out until the prompt is complete, and the tokens stay the reference's."""
    side, encoder, _ = family_setup
    req, images = _workload(side)[0]  # system prompt, image, text, image, text
    engine = LanguageEngine(side, EngineConfig(overlap_encode_prefill=True, max_batch_tokens=8, block_size=4), CPU)
    first, second = _encoded(encoder, images)
    engine.add_request(req)
    for _ in range(3):
        assert engine.step() == []  # the 23-token system prefix, in chunks of 8
    seq = engine.seqs[req.request_id]
    assert seq.num_computed == 23 and not engine.has_work  # caught up: waits for item 0
    engine.add_item(req.request_id, 0, first.meta, first.tensors, None, {})
    while engine.has_work:
        assert engine.step() == []
    assert seq.num_computed == len(seq.token_ids) > 23 and not seq.complete
    engine.add_item(req.request_id, 1, second.meta, second.tensors, None, {})
    tokens = []
    while engine.has_work:
        for out in engine.step():
            tokens += out.token_ids
    assert tokens == references[req.request_id]
