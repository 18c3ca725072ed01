"""The language engine on a Qwen3-VL-MoE checkpoint keeps transformers' greedy tokens: batching and
chunked prefill with images on CPU (the reference MoE path), and on a GPU the fused MoE kernel in
float32 with decode batches far past 16 replayed from CUDA graphs.

The shared workload and reference come from ``test_engine_oracle``."""

from __future__ import annotations

import gc

import numpy as np
import pytest
import torch

from epd.language import EngineConfig, LanguageEngine
from epd.models import detect_family
from epd.tiny import cached_tiny
from tests.engine.test_engine_oracle import _encoded, _reference, _request, _serve, _workload

CPU = torch.device("cpu")
NUM_TEXT = 40  # concurrent text requests: decode batches of up to 40, graphs of 48


@pytest.fixture(scope="module")
def moe_setup():
    from transformers import AutoModelForImageTextToText

    ckpt = cached_tiny("qwen3_vl_moe")
    family = detect_family(ckpt)
    encoder = family.load_encoder(ckpt, False, CPU, torch.float32)
    side = family.load_language(ckpt, False)
    hf = AutoModelForImageTextToText.from_pretrained(ckpt, dtype=torch.float32).eval()
    return side, encoder, hf


def _text_requests(side, n: int):
    rng = np.random.default_rng(11)
    return [_request(f"t{i}", side, rng.integers(0, 600, 5 + i % 13).tolist(), [], [], 6 + i % 5) for i in range(n)]


@pytest.fixture(scope="module")
def references(moe_setup):
    side, encoder, hf = moe_setup
    reqs = _workload(side) + _text_requests(side, NUM_TEXT)
    return {req.request_id: _reference(side, encoder, hf, req, imgs) for req, imgs in reqs}


def test_spec_reads_the_moe_shape(moe_setup):
    side, _, hf = moe_setup
    text = hf.config.text_config
    assert side.spec.num_experts == text.num_experts and side.spec.num_experts_per_tok == text.num_experts_per_tok
    assert side.spec.moe_layers == tuple(range(text.num_hidden_layers)) and side.spec.norm_topk_prob


@pytest.mark.parametrize("knobs", [{}, {"max_batch_tokens": 7, "block_size": 4}], ids=["whole", "chunked"])
def test_cpu_images_and_text(moe_setup, references, knobs):
    side, encoder, _ = moe_setup
    reqs = _workload(side) + _text_requests(side, 12)
    tokens, _, _ = _serve(side, encoder, reqs, EngineConfig(**knobs))
    assert tokens == {rid: references[rid] for rid in tokens}
    assert len(tokens) == len(reqs)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_gpu_float32_graphs_past_16(moe_setup, references):
    """Fused MoE kernel, CUDA graphs for every ``graph_batch_sizes`` entry (no batch-16 cap): the
    decode steps of 40 sequences replay a captured graph and give the CPU reference's tokens."""
    side, encoder, _ = moe_setup
    engine = LanguageEngine(side, EngineConfig(), torch.device("cuda"), torch.float32)
    engine.warm_up()
    assert engine.runner.moe_kernel == "triton"
    assert max(engine.runner.graphs) == max(EngineConfig().graph_batch_sizes), "every graph size is captured"
    replayed = []
    replay = engine.runner._replay

    def spy(decodes):
        replayed.append(len(decodes))
        return replay(decodes)

    engine.runner._replay = spy
    tokens: dict[str, list[int]] = {}
    for req, images in _workload(side) + _text_requests(side, NUM_TEXT):
        engine.add_request(req)
        for j, item in enumerate(_encoded(encoder, images)):
            engine.add_item(req.request_id, j, item.meta, item.tensors, None, {})
    while engine.has_work:
        for out in engine.step():
            assert out.error is None, out.error
            tokens.setdefault(out.request_id, []).extend(out.token_ids)
    del engine
    gc.collect()
    torch.cuda.empty_cache()
    assert max(replayed) > 16, f"decode batches replayed: {sorted(set(replayed))}"
    assert tokens == references


def test_expert_layouts_load_alike(moe_setup):
    """Per-expert tensors (released Qwen3-VL-MoE / Omni checkpoints), transformers 5's fused 3-D
    tensors and the hub's transposed fused ones all stack into the same ``w13`` / ``w2``."""
    from epd.language.models import QwenDecoder
    from epd.language.models.loader import checkpoint_tensors, load_weights

    side = moe_setup[0]
    fused = dict(checkpoint_tensors(cached_tiny("qwen3_vl_moe"), CPU))
    per_expert, transposed = {}, {}
    for name, t in fused.items():
        if name.endswith("mlp.experts.gate_up_proj"):  # [E, 2I, H]
            gate, up = t.chunk(2, dim=1)
            for e in range(t.shape[0]):
                per_expert[name.replace("gate_up_proj", f"{e}.gate_proj.weight")] = gate[e]
                per_expert[name.replace("gate_up_proj", f"{e}.up_proj.weight")] = up[e]
            transposed[name] = t  # square at the tiny size (H = 2I): stays as transformers wrote it
        elif name.endswith("mlp.experts.down_proj"):  # [E, H, I]
            for e in range(t.shape[0]):
                per_expert[name.replace("down_proj", f"{e}.down_proj.weight")] = t[e]
            transposed[name] = t.transpose(1, 2).contiguous()  # the hub's [E, I, H]
        else:
            per_expert[name] = transposed[name] = t
    models = []
    for tensors in (fused, per_expert, transposed):
        model = QwenDecoder(side.spec, None)
        load_weights(model, tensors.items())
        models.append(dict(model.named_parameters()))
    for name, want in models[0].items():
        assert all(torch.equal(m[name], want) for m in models[1:]), name
    assert not torch.equal(models[0]["layers.0.mlp.w2"][0], models[0]["layers.0.mlp.w2"][1])


def test_moe_kernel_knob_is_checked():
    with pytest.raises(ValueError, match="engine.moe_kernel"):
        EngineConfig(moe_kernel="cutlass")


def test_moe_bench_smoke(capsys):
    """``python -m epd.bench.engine --model qwen3_moe --smoke`` on CPU: labelled, and epd's float32
    tokens equal transformers' in its correctness table."""
    from epd.bench.engine_moe import run_moe

    run_moe(smoke=True)
    out = capsys.readouterr().out
    assert "SMOKE RUN (tiny shape), cpu, float32" in out
    rows = [line for line in out.splitlines() if line.startswith("| ") and " tokens |" in line]
    assert len(rows) == 2 and all(row.split("|")[2].strip() == "16/16" for row in rows), rows
    assert "| prefill 256 |" in out and "| decode b32 |" in out
