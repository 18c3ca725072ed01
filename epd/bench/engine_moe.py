"""Language-engine benchmark at the MoE flagship shape: the Qwen3-VL-30B-A3B / Qwen3-Omni-30B-A3B
language model (48 layers, hidden 2048, 128 experts of width 768, 8 active), epd vs transformers vs
the floor, in one run.

    python -m epd.bench.engine --model qwen3_moe            # GPU, bf16, random weights
    python -m epd.bench.engine --model qwen3_moe --smoke    # a tiny shape, labelled SMOKE (CPU works)

Text-only prompts, so the model is transformers' ``Qwen3MoeForCausalLM`` with 1-D rope of theta 5e6
(equal to Qwen3-VL's interleaved M-RoPE when all three position rows are the token index).

1. Correctness at 4 layers of the real width: float32 greedy tokens of epd's MoE path against
   transformers' (eager experts), and bf16 first-token logits' error against float32, for epd (each
   MoE kernel) and transformers (its grouped_mm experts).
2. Timings at full depth: decode at batch 1 and 32, a 16k prefill, sequences of 8k held at once.
   The weights exist once (~61 GB): epd's engine initialises them, is timed, drops its KV cache and
   graphs, and transformers' model is then built over views of the same tensors. Memory budget for
   both: min(90% of the device, 75 GB), so the run fits an H100 as well as the H200.
3. Floors from this run's copy and matmul rates: decode reads the non-expert weights, the experts
   the step's routing actually touches (counted with hooks on eager steps) and the KV cache; the
   prefill's active FLOPs over the matmul rate.
"""

from __future__ import annotations

import gc
import statistics

import torch

from epd.bench.engine import (
    TextSide,
    _agree,
    _rel,
    capture_logits,
    cast_params,
    epd_prefill,
    epd_run,
    epd_tpot,
    hf_generate,
    hf_max_concurrent,
    hf_prefill,
    hf_tpot,
    measure_ceilings,
)
from epd.language import EngineConfig, LanguageEngine
from epd.language.models import DecoderSpec
from epd.language.models.layers import MoE
from epd.language.models.loader import param_view
from epd_kernels.moe import grouped_mm_available, route_reference

BUDGET_CAP = 75e9  # bytes: weights + activations + KV cache, for epd and for transformers
SMOKE_SHAPE = {"vocab_size": 512, "hidden_size": 64, "intermediate_size": 128, "num_attention_heads": 4,
               "num_key_value_heads": 2, "head_dim": 16, "num_experts": 8, "num_experts_per_tok": 2,
               "moe_intermediate_size": 32}  # fmt: skip


def moe_config(layers: int | None, smoke: bool):
    """transformers' Qwen3-MoE config of the released text model (``epd.tiny`` REAL_MOE_SHAPES), or the smoke shape."""
    from transformers import Qwen3MoeConfig

    from epd.tiny.qwen3_vl import REAL_MOE_SHAPES

    real = REAL_MOE_SHAPES["30b"]["text"]
    fields = {k: real[k] for k in ("vocab_size", "hidden_size", "intermediate_size", "num_attention_heads")}
    fields.update({k: real[k] for k in ("num_key_value_heads", "head_dim", "num_experts", "num_experts_per_tok")})
    fields.update(moe_intermediate_size=real["moe_intermediate_size"], num_hidden_layers=real["num_hidden_layers"])
    if smoke:
        fields.update(SMOKE_SHAPE, num_hidden_layers=2)
    if layers:
        fields["num_hidden_layers"] = layers
    theta = real["rope_parameters"]["rope_theta"]
    return Qwen3MoeConfig(
        **fields, norm_topk_prob=True, decoder_sparse_step=1, mlp_only_layers=[], rms_norm_eps=1e-6,
        rope_parameters={"rope_type": "default", "rope_theta": theta}, tie_word_embeddings=False,
        max_position_embeddings=65536, initializer_range=0.02,
    )  # fmt: skip


def moe_spec(cfg) -> DecoderSpec:
    return DecoderSpec.from_hf_config(cfg, rope_style="1d", qk_norm=True, qkv_bias=False, tie=False)


def moe_kernels(device: torch.device, dtype: torch.dtype) -> list[str]:
    """The MoE kernels epd can run here (off CUDA only the reference)."""
    if device.type != "cuda":
        return ["reference"]
    return ["triton"] + (["grouped_mm"] if grouped_mm_available(device, dtype) else [])


def hf_over(model, cfg, device: torch.device):
    """transformers' model over views of epd's parameters: no second copy of the weights."""
    from transformers import Qwen3MoeForCausalLM
    from transformers.models.qwen3_moe.modeling_qwen3_moe import Qwen3MoeRotaryEmbedding

    with torch.device("meta"):
        hf = Qwen3MoeForCausalLM._from_config(cfg, dtype=model.embed_table.dtype)
    for name, _ in list(hf.named_parameters()):
        view = param_view(model, name)
        assert view is not None, f"epd keeps no {name}"
        owner, _, leaf = name.rpartition(".")
        hf.get_submodule(owner)._parameters[leaf] = torch.nn.Parameter(view, requires_grad=False)
    with torch.device(device):
        hf.model.rotary_emb = Qwen3MoeRotaryEmbedding(config=cfg)
    assert not any(t.is_meta for t in (*hf.parameters(), *hf.buffers()))
    assert hf.model.layers[0].mlp.experts.gate_up_proj.data_ptr() == model.layers[0].mlp.w13.data_ptr()
    return hf.eval()


# ---- 1. correctness at reduced depth ---------------------------------------------------------------


def _hf_answers(hf, prompts, device) -> tuple[list[list[int]], list[torch.Tensor]]:
    tokens, logits = [], []
    for ids in prompts:
        x = torch.tensor([ids], device=device)
        tokens.append(hf_generate(hf, x, 16)[0, len(ids) :].tolist())
        with torch.inference_mode():
            logits.append(hf(x, logits_to_keep=1).logits[0, -1].float().cpu())
    return tokens, logits


def _epd_answers(spec, hf, dtype, device, kernel, prompts) -> tuple[list[list[int]], list[torch.Tensor]]:
    cfg = EngineConfig(kv_tokens=16384, max_batch_tokens=4096, graph_batch_sizes=[1, 2, 4], moe_kernel=kernel)
    tensors = ((name, p.detach().to(device, dtype)) for name, p in hf.named_parameters())
    engine = LanguageEngine(TextSide(spec), cfg, device, dtype, tensors=tensors)
    engine.warm_up()
    seen = capture_logits(engine)
    tokens, _ = epd_run(engine, prompts, 16)
    first = seen[0]  # the first step prefills every prompt, in request order, and samples its first token
    answers = [tokens[f"b{i}"] for i in range(len(prompts))], [first[i] for i in range(len(prompts))]
    del engine
    gc.collect()
    return answers


def check_correctness(device: torch.device, smoke: bool) -> None:
    """Print float32 token agreement and bf16 logit errors at 4 layers (smoke: 2) of the width."""
    from transformers import Qwen3MoeForCausalLM

    cfg = moe_config(2 if smoke else 4, smoke)
    spec = moe_spec(cfg)
    gen = torch.Generator().manual_seed(1)
    vocab = min(cfg.vocab_size, 150000)
    lengths = (16, 100) if smoke else (16, 100, 500, 2000)
    prompts = [torch.randint(0, vocab, (n,), generator=gen).tolist() for n in lengths]
    with torch.device(device):
        hf = Qwen3MoeForCausalLM._from_config(cfg, dtype=torch.float32).eval()
    hf.set_experts_implementation("eager")  # transformers' reference loop, exact in float32
    hf32_tokens, hf32_logits = _hf_answers(hf, prompts, device)
    epd32_tokens, _ = _epd_answers(spec, hf, torch.float32, device, "auto", prompts)
    cast_params(hf, torch.bfloat16)
    hf.set_experts_implementation("grouped_mm" if grouped_mm_available(device, torch.bfloat16) else "eager")
    hf16_tokens, hf16_logits = _hf_answers(hf, prompts, device)
    epd16 = {k: _epd_answers(spec, hf, torch.bfloat16, device, k, prompts) for k in moe_kernels(device, torch.bfloat16)}
    del hf
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
    width = "the smoke shape" if smoke else "the real width"
    print(f"\ncorrectness at {cfg.num_hidden_layers} layers of {width} (same random weights; leading greedy "
          "tokens equal, of 16; logits: first token, relative error against transformers float32):")  # fmt: skip
    kernels = list(epd16)
    head = ["prompt", "epd float32 = HF float32", "HF bfloat16 = HF float32"]
    head += [f"epd bfloat16 ({k}) = HF float32" for k in kernels]
    head += ["HF bfloat16 logits err"] + [f"epd bfloat16 ({k}) logits err" for k in kernels]
    print("| " + " | ".join(head) + " |\n|" + "---|" * len(head))
    for i, ids in enumerate(prompts):
        cells = [f"{len(ids)} tokens", _agree(epd32_tokens[i], hf32_tokens[i]), _agree(hf16_tokens[i], hf32_tokens[i])]
        cells += [_agree(epd16[k][0][i], hf32_tokens[i]) for k in kernels]
        cells += [_rel(hf16_logits[i], hf32_logits[i])] + [_rel(epd16[k][1][i], hf32_logits[i]) for k in kernels]
        print("| " + " | ".join(cells) + " |", flush=True)


# ---- 2. timings at full depth ----------------------------------------------------------------------


def touched_experts(engine: LanguageEngine, batch: int, prompt: int, vocab: int) -> float:
    """Mean distinct experts one MoE layer reads in a decode step of ``batch`` sequences (eager steps)."""
    counts: list[int] = []

    def hook(module, args):
        x = args[0]
        if x.shape[0] == batch:  # decode steps only (prefill steps hold batch * prompt rows)
            _, experts = route_reference(x, module.gate.weight, module.top_k, module.norm_topk)
            counts.append(experts.unique().numel())

    model = engine.runner.model
    handles = [m.register_forward_pre_hook(hook) for m in model.modules() if isinstance(m, MoE)]
    graphs, engine.runner.graphs = engine.runner.graphs, {}
    try:
        epd_run(engine, [torch.randint(0, vocab, (prompt,)).tolist() for _ in range(batch)], 4)
    finally:
        engine.runner.graphs = graphs
        for h in handles:
            h.remove()
    return statistics.mean(counts)


def drop_kv(engine: LanguageEngine) -> None:
    """Give back the engine's KV cache and graph pools; its weights stay (transformers reuses them)."""
    runner = engine.runner
    runner.graphs.clear()
    runner.kv_cache = runner.attention.kv_cache = None
    gc.collect()
    if runner.device.type == "cuda":
        torch.cuda.empty_cache()


def time_epd(engine: LanguageEngine, sizes: dict, vocab: int) -> dict[str, float]:
    prompt, new, prefill, context = sizes["prompt"], sizes["new"], sizes["prefill"], sizes["context"]
    return {
        "decode b1": epd_tpot(engine, 1, prompt, new, vocab),
        "decode b32": epd_tpot(engine, 32, prompt, new, vocab),
        f"prefill {prefill}": epd_prefill(engine, prefill, vocab),
        f"concurrent @{context}": engine.capacity_tokens / context,  # a full cache of such sequences
    }


def time_hf(hf, sizes: dict, device: torch.device, budget: float, vocab: int) -> dict[str, tuple[float, str]]:
    """transformers' times with its fastest experts implementation per row: (time, implementation)."""
    prompt, new, prefill, context = sizes["prompt"], sizes["hf_new"], sizes["prefill"], sizes["context"]
    # generate (5.24) runs grouped_mm's decode steps as batched_mm on GPU; both are timed, the faster kept
    out = {}
    for key, batch in (("decode b1", 1), ("decode b32", 32)):
        times = []
        for impl in ("grouped_mm", "batched_mm"):
            hf.set_experts_implementation(impl)
            try:
                times.append((hf_tpot(hf, batch, prompt, new, device, vocab), impl))
            except torch.OutOfMemoryError:  # batched_mm gathers each token's experts: a batched prefill cannot
                print(f"transformers {impl} at batch {batch}: out of memory, left out", flush=True)
                torch.cuda.empty_cache()
        out[key] = min(times)
    hf.set_experts_implementation("grouped_mm")
    out[f"prefill {prefill}"] = (hf_prefill(hf, prefill, device, vocab), "grouped_mm")
    if device.type == "cuda":
        print(f"transformers peak memory (decode, prefill): {torch.cuda.max_memory_allocated(device) / 1e9:.1f} GB")
    concurrent = hf_max_concurrent(hf, context, device, budget, vocab) if device.type == "cuda" else float("nan")
    out[f"concurrent @{context}"] = (concurrent, "grouped_mm")
    print("transformers done", {k: (round(v, 4), i) for k, (v, i) in out.items()}, flush=True)
    return out


def floors(model, sizes: dict, touched: dict[int, float], bw: float, flops: float, budget: float) -> dict[str, float]:
    """Decode: bytes a step must read (non-expert weights, touched experts, KV cache) ÷ copy rate;
    prefill: active FLOPs ÷ matmul rate (or all weights ÷ copy rate, if longer); concurrency: the
    sequences whose KV cache fits the budget after the weights."""
    spec = model.spec
    params = dict(model.named_parameters())
    itemsize = model.embed_table.element_size()
    experts = {n: p for n, p in params.items() if n.endswith((".w13", ".w2"))}
    expert_params = sum(p[0].numel() for p in experts.values()) / max(1, len(spec.moe_layers))  # one expert, one layer
    dense = sum(p.numel() for n, p in params.items() if n not in experts and "embed_tokens" not in n)
    weight_bytes = sum(p.numel() for p in params.values()) * itemsize
    kv_per_token = 2 * spec.num_layers * spec.num_kv_heads * spec.head_dim * itemsize
    layers = len(spec.moe_layers)
    out = {}
    for b in (1, 32):
        moved = (dense + touched[b] * expert_params * layers) * itemsize + b * (
            sizes["prompt"] + sizes["new"]
        ) * kv_per_token
        out[f"decode b{b}"] = moved / bw
    t = sizes["prefill"]
    lm_head = spec.vocab_size * spec.hidden_size
    active = dense - lm_head + spec.num_experts_per_tok * expert_params * layers
    attn = 2 * t**2 * spec.num_heads * spec.head_dim * spec.num_layers  # causal QK and PV
    out[f"prefill {t}"] = max((2 * active * t + attn + 2 * lm_head) / flops, weight_bytes / bw)
    out[f"concurrent @{sizes['context']}"] = (budget - weight_bytes) / (sizes["context"] * kv_per_token)
    return out


def run_moe(smoke: bool = False, layers: int | None = None) -> None:
    """The whole benchmark; prints the correctness table, then the timing table."""
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    smoke = smoke or device.type != "cuda"
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    tag = f"{'SMOKE RUN (tiny shape), ' if smoke else ''}{device.type}, {str(dtype).removeprefix('torch.')}"
    print(f"# MoE engine bench: {tag}", flush=True)
    torch.manual_seed(0)
    bw, flops = measure_ceilings(device)
    check_correctness(device, smoke)
    cfg = moe_config(layers or (2 if smoke else None), smoke)
    spec = moe_spec(cfg)
    vocab = min(cfg.vocab_size, 150000)
    sizes = dict(prompt=16, new=8, hf_new=8, prefill=256, context=128) if smoke else (
        dict(prompt=128, new=128, hf_new=32, prefill=16384, context=8192))  # fmt: skip
    cuda = device.type == "cuda"
    total = torch.cuda.get_device_properties(device).total_memory if cuda else float("nan")
    budget = min(0.9 * total, BUDGET_CAP) if cuda else float("nan")
    ecfg = EngineConfig(max_batch_tokens=max(sizes["prefill"], 256 if smoke else 8192), max_num_seqs=256,
                        kv_fraction=budget / total if cuda else 0.9, kv_tokens=None if cuda else 65536)  # fmt: skip
    engine = LanguageEngine(TextSide(spec), ecfg, device, dtype)  # random weights: the run's one copy
    engine.warm_up()
    model = engine.runner.model
    weight_gb = sum(p.numel() * p.element_size() for p in model.parameters()) / 1e9
    print(f"model: Qwen3-MoE (30B-A3B text), {spec.num_layers} layers, {weight_gb:.2f} GB of weights, {tag}; "
          f"memory budget {budget / 1e9:.1f} GB of {total / 1e9:.1f}", flush=True)  # fmt: skip
    ours = {engine.runner.moe_kernel: time_epd(engine, sizes, vocab)}
    touched = {b: touched_experts(engine, b, sizes["prompt"], vocab) for b in (1, 32)}
    capacity = engine.capacity_tokens
    for kernel in moe_kernels(device, dtype)[1:]:  # the other kernels, graphs captured again
        try:
            engine.runner.moe_kernel = kernel
            model.set_moe_kernel(kernel)
            engine.runner.graphs.clear()
            engine.runner.capture_graphs()
            ours[kernel] = time_epd(engine, sizes, vocab)
        except RuntimeError as exc:  # reported; the rest of the run still counts
            print(f"# epd with engine.moe_kernel={kernel} failed: {exc}", flush=True)
    print("epd done", {k: {w: round(v, 4) for w, v in t.items()} for k, t in ours.items()}, flush=True)
    peak_epd = torch.cuda.max_memory_allocated(device) / 1e9 if cuda else float("nan")
    drop_kv(engine)
    if cuda:
        torch.cuda.reset_peak_memory_stats(device)
    base = time_hf(hf_over(model, cfg, device), sizes, device, budget, vocab)
    floor = floors(model, sizes, touched, bw, flops, budget)
    print(f"\nceilings: copy {bw / 1e9:.0f} GB/s (read + write), bf16 matmul {flops / 1e12:.0f} TFLOP/s; "
          f"experts touched per layer and decode step: {touched[1]:.1f} at batch 1, {touched[32]:.1f} at batch 32 "
          f"of {spec.num_experts}; epd KV cache {capacity} tokens; epd peak memory {peak_epd:.1f} GB")  # fmt: skip
    print_table(ours, base, floor, tag)


def print_table(ours: dict[str, dict[str, float]], base: dict[str, tuple[float, str]], floor, tag: str) -> None:
    kernels = list(ours)
    head = ["work"] + [f"epd ({k})" for k in kernels] + ["transformers (experts)", "floor", "epd / transformers"]
    print(f"\n{tag}\n| " + " | ".join(head + ["epd / floor"]) + " |\n|" + "---|" * (len(head) + 1))
    for key in ours[kernels[0]]:
        best = min(ours[k][key] for k in kernels) if not key.startswith("concurrent") else ours[kernels[0]][key]
        hf, impl = base[key]
        f = floor[key]
        if key.startswith("concurrent"):
            cells = [f"{key} (sequences)"] + [f"{ours[k][key]:.0f}" for k in kernels] + [f"{hf:.0f}", f"{f:.0f}"]
            cells += [f"{best / hf:.2f}x", f"{best / f:.2f}"]
        else:
            cells = [key] + [f"{ours[k][key] * 1e3:.2f} ms" for k in kernels] + [f"{hf * 1e3:.2f} ms ({impl})"]
            cells += [f"{f * 1e3:.2f} ms", f"{best / hf:.3f}", f"{best / f:.2f}"]
        print("| " + " | ".join(cells) + " |", flush=True)
