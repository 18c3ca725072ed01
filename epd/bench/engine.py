"""Language-engine benchmark: epd vs transformers ``generate`` vs the hardware floor, in one run.

    python -m epd.bench.engine                 # GPU: Qwen2.5-7B shape, random weights, bf16
    python -m epd.bench.engine --smoke         # a smoke run: a narrow 2-layer model, short sequences;
                                               # the only mode on CPU (float32; times are not benchmarks)
    python -m epd.bench.engine --model qwen3_moe [--smoke]   # the MoE flagship shape (engine_moe.py)

Rows: decode time per output token at batch 1 and 32, prefill of 16k tokens, most concurrent
sequences at 8k context. Floors are measured in the same run: a large device-to-device copy gives
the memory rate (weights read once per decode step), an 8192³ bf16 matmul the compute rate.
Before timing, a correctness check: transformers and epd, same random weights, greedy tokens and
the first-token logits' relative error (both in the run's dtype, and on GPU each against a float32
run of the model). Every label names the dtype the run really used.
"""

from __future__ import annotations

import argparse
import gc
import itertools
import math
import statistics
import sys
import time
from collections.abc import Callable
from typing import Any

import torch

from epd.language import EngineConfig, LanguageEngine
from epd.language.models import DecoderSpec
from epd.models.base import LanguageSide
from epd.protocol import NewRequest, SamplingParams


class TextSide(LanguageSide):
    """A text-only language side over a bare decoder spec (no media, no checkpoint)."""

    def __init__(self, spec: DecoderSpec) -> None:
        self.spec = spec
        self.weights = None
        self.hf_config = None
        self.eos_token_ids = []

    def placeholder_span(self, modality: str) -> list[int]:
        raise ValueError("text only")

    def positions(self, ids, types, items):
        raise ValueError("text only")


def qwen25_7b_config(layers: int | None = None) -> Any:
    """Qwen2.5-7B's text model (= Qwen2.5-VL-7B's language model)."""
    from transformers import Qwen2Config

    return Qwen2Config(
        vocab_size=152064,
        hidden_size=3584,
        intermediate_size=18944,
        num_hidden_layers=layers or 28,
        num_attention_heads=28,
        num_key_value_heads=4,
        max_position_embeddings=32768,
        rms_norm_eps=1e-6,
        rope_theta=1000000.0,
        tie_word_embeddings=False,
        initializer_range=0.02,
    )


SMOKE_SHAPE = {"num_hidden_layers": 2, "hidden_size": 256, "intermediate_size": 512, "num_attention_heads": 4,
               "num_key_value_heads": 2}  # fmt: skip


def smoke_config(cfg: Any) -> Any:
    """``cfg`` narrowed to SMOKE_SHAPE (same architecture and vocabulary): a CPU runs it in seconds."""
    for key, value in SMOKE_SHAPE.items():
        setattr(cfg, key, value)
    if getattr(cfg, "head_dim", None):
        cfg.head_dim = cfg.hidden_size // cfg.num_attention_heads
    return cfg


def progress(message: str) -> None:
    """One progress line on stderr (the tables go to stdout)."""
    print(f"epd.bench.engine: {message}", file=sys.stderr, flush=True)


def _ms(seconds: float) -> str:
    return "-" if math.isnan(seconds) else f"{seconds * 1e3:.2f} ms"


def _count(value: float) -> str:
    return "-" if math.isnan(value) else f"{value:.0f}"


def _ratio(a: float, b: float, digits: int = 3) -> str:
    return "-" if math.isnan(a) or math.isnan(b) or b == 0 else f"{a / b:.{digits}f}"


def cast_params(model: torch.nn.Module, dtype: torch.dtype) -> None:
    """Cast parameters only (``Module.to`` would also cast rope's float32 buffers)."""
    for p in model.parameters():
        p.data = p.data.to(dtype)


def sync_time(fn: Callable[[], Any], device: torch.device) -> float:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    start = time.perf_counter()
    fn()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter() - start


# ---- floors ----------------------------------------------------------------------------------------


def measure_ceilings(device: torch.device) -> tuple[float, float]:
    """(bytes/s of a device copy counting read + write, bf16 matmul FLOP/s), medians of timed runs."""
    if device.type != "cuda":
        return float("nan"), float("nan")
    from triton.testing import do_bench

    src = torch.randn(2**29, device=device, dtype=torch.bfloat16)  # 1 GiB
    dst = torch.empty_like(src)
    copy_ms = do_bench(lambda: dst.copy_(src), warmup=25, rep=200, return_mode="median")
    bw = 2 * src.numel() * src.element_size() / (copy_ms * 1e-3)
    a = torch.randn(8192, 8192, device=device, dtype=torch.bfloat16)
    b = torch.randn(8192, 8192, device=device, dtype=torch.bfloat16)
    mm_ms = do_bench(lambda: a @ b, warmup=25, rep=200, return_mode="median")
    flops = 2 * 8192**3 / (mm_ms * 1e-3)
    torch.cuda.empty_cache()
    return bw, flops


# ---- transformers ----------------------------------------------------------------------------------


def hf_generate(model, ids: torch.Tensor, new_tokens: int) -> torch.Tensor:
    with torch.inference_mode():
        return model.generate(
            input_ids=ids,
            attention_mask=torch.ones_like(ids),
            do_sample=False,
            max_new_tokens=new_tokens,
            min_new_tokens=new_tokens,
            eos_token_id=None,
            pad_token_id=0,
        )


def hf_tpot(model, batch: int, prompt: int, new: int, device, vocab: int = 150000) -> float:
    ids = torch.randint(0, vocab, (batch, prompt), device=device)
    t1 = min(sync_time(lambda: hf_generate(model, ids, 1), device) for _ in range(2))
    tn = min(sync_time(lambda: hf_generate(model, ids, new + 1), device) for _ in range(2))
    return (tn - t1) / new


def hf_prefill(model, tokens: int, device, vocab: int = 150000) -> float:
    ids = torch.randint(0, vocab, (1, tokens), device=device)
    hf_generate(model, ids, 1)
    return statistics.median(sync_time(lambda: hf_generate(model, ids, 1), device) for _ in range(3))


def hf_max_concurrent(model, context: int, device, budget: float, vocab: int = 150000) -> float:
    """Sequences of ``context`` tokens one ``generate`` batch holds: the peak memory of batches of 1
    and 2 extrapolated to ``budget`` bytes (transformers keeps no paged cache)."""
    peaks = []
    for batch in (1, 2):
        ids = torch.randint(0, vocab, (batch, context), device=device)
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
        hf_generate(model, ids, 2)
        peaks.append(torch.cuda.max_memory_allocated(device))
    per_seq = peaks[1] - peaks[0]
    return (budget - (peaks[0] - per_seq)) / per_seq


# ---- epd -------------------------------------------------------------------------------------------


_RUNS = itertools.count()


def epd_run(engine: LanguageEngine, prompts: list[list[int]], new: int) -> tuple[dict[str, list[int]], list[float]]:
    """Serve ``prompts`` (all at once); tokens per request (``b<i>``) and the wall time of every step."""
    run = next(_RUNS)  # request ids are never reused: an engine drops a repeat of an id it has served
    for i, ids in enumerate(prompts):
        engine.add_request(
            NewRequest(
                request_id=f"b{i}.{run}",
                prompt_token_ids=ids,
                items=[],
                sampling=SamplingParams(max_tokens=new, ignore_eos=True),
            )
        )
    tokens: dict[str, list[int]] = {}
    times = []
    while engine.has_work:
        start = time.perf_counter()
        outs = engine.step()  # returns after the step's tokens reached the host
        times.append(time.perf_counter() - start)
        for out in outs:
            tokens.setdefault(out.request_id.rpartition(".")[0], []).extend(out.token_ids)
    return tokens, times


def epd_tpot(engine: LanguageEngine, batch: int, prompt: int, new: int, vocab: int = 150000) -> float:
    prompts = [torch.randint(0, vocab, (prompt,)).tolist() for _ in range(batch)]
    epd_run(engine, prompts, 4)  # warm
    _, times = epd_run(engine, prompts, new + 1)
    return statistics.median(times[1:])  # every step after the prefill step decodes the whole batch


def epd_prefill(engine: LanguageEngine, tokens: int, vocab: int = 150000) -> float:
    prompts = [torch.randint(0, vocab, (tokens,)).tolist()]
    epd_run(engine, prompts, 1)
    runs = []
    for _ in range(3):
        prompts = [torch.randint(0, vocab, (tokens,)).tolist()]  # fresh ids: no prefix-cache hit
        _, times = epd_run(engine, prompts, 1)
        runs.append(sum(times))
    return statistics.median(runs)


def capture_logits(engine: LanguageEngine) -> list[torch.Tensor]:
    """Record the logits every step samples from (the correctness check reads the first token's)."""
    seen: list[torch.Tensor] = []
    sample = engine.runner._sample

    def recording(logits, seqs, greedy=None):
        seen.append(logits.detach().float().cpu())
        return sample(logits, seqs, greedy)

    engine.runner._sample = recording
    return seen


DTYPE_NAMES = {torch.bfloat16: "bf16", torch.float16: "fp16", torch.float32: "fp32"}


def _agree(a: list[int], b: list[int]) -> str:
    """Leading tokens in common, of all."""
    if not b:
        return "-"
    n = next((j for j, (x, y) in enumerate(zip(a, b, strict=True)) if x != y), len(b))
    return f"{n}/{len(b)}"


def _rel(a: torch.Tensor, ref: torch.Tensor | None) -> str:
    return f"{((a - ref).norm() / ref.norm()).item():.2e}" if ref is not None else "-"


def print_correctness(
    prompts, checks, hf_tokens, hf_logits, fp32_tokens, fp32_logits, epd32_tokens, eager_tokens, dtype=torch.bfloat16
) -> None:
    """Greedy agreement (leading tokens equal) and first-token logit errors, per check prompt, with
    ``dtype`` (the run's) in every label. The control column is transformers against itself (eager
    attention vs SDPA, both in ``dtype``)."""
    d = DTYPE_NAMES.get(dtype, str(dtype))
    print(f"\ncorrectness (same random weights, {d}; leading greedy tokens equal, of 16):")
    print(
        f"| prompt | epd = HF ({d}) | control: HF eager = HF sdpa ({d}) | HF {d} = HF fp32 | epd fp32 = HF fp32 "
        f"| logits rel. err. epd vs HF ({d}) | epd {d} vs fp32 | HF {d} vs fp32 |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for i, ids in enumerate(prompts):
        logits, tokens = checks[i]
        f32 = fp32_logits[i] if fp32_logits else None
        f32_tokens = fp32_tokens[i] if fp32_tokens else []
        print(
            f"| {len(ids)} tokens | {_agree(tokens, hf_tokens[i])} | {_agree(eager_tokens[i], hf_tokens[i])} "
            f"| {_agree(hf_tokens[i], f32_tokens)} "
            f"| {_agree(epd32_tokens.get(f'b{i}', []), f32_tokens) if epd32_tokens else '-'} "
            f"| {_rel(logits, hf_logits[i])} | {_rel(logits, f32)} | {_rel(hf_logits[i], f32)} |"
        )
    if not fp32_logits:
        print("(the fp32 columns need a separate float32 run, made on GPU only)")


# ---- main ------------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m epd.bench.engine", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--smoke", "--quick", action="store_true", help="smoke run: 2 narrow layers, short sequences (needed on CPU)"
    )
    parser.add_argument("--layers", type=int, default=None, help="override the number of layers")
    parser.add_argument(
        "--model",
        choices=("qwen2_5_7b", "qwen3_moe"),
        default="qwen2_5_7b",
        help="qwen3_moe: the Qwen3-VL-30B-A3B / Qwen3-Omni-30B-A3B language model (epd.bench.engine_moe)",
    )
    args = parser.parse_args(argv)
    if args.model == "qwen3_moe":
        from epd.bench.engine_moe import run_moe

        return run_moe(smoke=args.smoke, layers=args.layers)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.type != "cuda" and not args.smoke:
        parser.exit(
            2,
            "epd.bench.engine: no CUDA GPU here; the benchmark times the Qwen2.5-7B shape in bf16 on a GPU. "
            "On CPU, --smoke runs a narrow 2-layer float32 model through the same code paths "
            "(a check that it runs, in seconds; its times are not benchmarks).\n",
        )
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    quick = args.smoke
    prompt, new, prefill_tokens, context = (64, 16, 1024, 1024) if quick else (128, 128, 16384, 8192)
    torch.manual_seed(0)

    progress(f"measuring the {device.type} floors" if device.type == "cuda" else "no floors on CPU")
    bw, flops = measure_ceilings(device)
    from transformers import Qwen2ForCausalLM

    hf_cfg = smoke_config(qwen25_7b_config()) if quick else qwen25_7b_config()
    if args.layers:
        hf_cfg.num_hidden_layers = args.layers
    with torch.device(device):  # built in dtype: a later .to(bf16) would also round rope's inv_freq buffer
        hf = Qwen2ForCausalLM._from_config(hf_cfg, dtype=dtype).eval()
    assert hf.model.rotary_emb.inv_freq.dtype == torch.float32
    spec = DecoderSpec.from_hf_config(hf_cfg, rope_style="1d", qk_norm=False, qkv_bias=True, tie=False)
    weight_bytes = sum(p.numel() * p.element_size() for p in hf.parameters())
    kv_per_token = 2 * spec.num_layers * spec.num_kv_heads * spec.head_dim * torch.finfo(dtype).bits // 8
    shape = f"SMOKE RUN, not a benchmark: Qwen2.5-7B narrowed to hidden {spec.hidden_size}" if quick else "Qwen2.5-7B"
    print(
        f"model: {shape}, {spec.num_layers} layers, {weight_bytes / 1e9:.2f} GB of weights, {dtype} on {device}",
        flush=True,
    )

    # correctness prompts and transformers' answers (bf16 and float32 first-token logits)
    gen = torch.Generator().manual_seed(1)
    lengths = (16, 100, 500, 2000) if not quick else (16, 100)
    check_prompts = [torch.randint(0, 150000, (n,), generator=gen).tolist() for n in lengths]
    hf_tokens, hf_logits, fp32_tokens, fp32_logits, eager_tokens = [], [], [], [], []
    progress(f"transformers: correctness prompts {lengths}")
    for ids in check_prompts:
        x = torch.tensor([ids], device=device)
        hf_tokens.append(hf_generate(hf, x, 16)[0, len(ids) :].tolist())
        with torch.inference_mode():
            hf_logits.append(hf(x, logits_to_keep=1).logits[0, -1].float().cpu())
    # the control: transformers against itself, eager attention instead of SDPA, same dtype and weights
    hf.config._attn_implementation = "eager"
    for ids in check_prompts:
        eager_tokens.append(hf_generate(hf, torch.tensor([ids], device=device), 16)[0, len(ids) :].tolist())
    hf.config._attn_implementation = "sdpa"
    if device.type == "cuda":
        cast_params(hf, torch.float32)
        with torch.inference_mode():
            for ids in check_prompts:
                x = torch.tensor([ids], device=device)
                fp32_logits.append(hf(x, logits_to_keep=1).logits[0, -1].float().cpu())
                fp32_tokens.append(hf_generate(hf, x, 16)[0, len(ids) :].tolist())
        cast_params(hf, dtype)

    # transformers' timings
    progress(f"transformers: timing decode (batch 1, 32), prefill {prefill_tokens}, concurrency")
    budget = torch.cuda.get_device_properties(device).total_memory * 0.9 if device.type == "cuda" else float("nan")
    base = {
        "decode b1": hf_tpot(hf, 1, prompt, new, device),
        "decode b32": hf_tpot(hf, 32, prompt, new, device),
        f"prefill {prefill_tokens}": hf_prefill(hf, prefill_tokens, device),
        f"concurrent @{context}": hf_max_concurrent(hf, context, device, budget)
        if device.type == "cuda"
        else float("nan"),
    }
    print("transformers done", {k: round(v, 4) for k, v in base.items()}, flush=True)
    state = {name: p.detach().to("cpu") for name, p in hf.named_parameters()}
    del hf
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()

    # epd: same weights
    progress("epd: building the engine (warm-up, CUDA graphs on GPU) and checking the same prompts")
    cfg = EngineConfig(max_batch_tokens=max(prefill_tokens, 8192), max_num_seqs=256)
    engine = LanguageEngine(TextSide(spec), cfg, device, dtype, tensors=((k, v.to(device)) for k, v in state.items()))
    engine.warm_up()
    seen = capture_logits(engine)
    epd_tokens, _ = epd_run(engine, check_prompts, 16)
    # the first step prefills every check prompt (in request order) and samples their first tokens
    first = seen[0]
    checks = [(first[i], epd_tokens[f"b{i}"]) for i in range(len(check_prompts))]
    engine.runner._sample = type(engine.runner)._sample.__get__(engine.runner)

    # epd timings (triton decode kernel; flash decode too where this torch has it)
    progress(f"epd: timing decode (batch 1, 32), prefill {prefill_tokens}")
    ours = {
        "decode b1": epd_tpot(engine, 1, prompt, new),
        "decode b32": epd_tpot(engine, 32, prompt, new),
        f"prefill {prefill_tokens}": epd_prefill(engine, prefill_tokens),
        f"concurrent @{context}": engine.capacity_tokens / context,  # a full cache of 8k sequences
    }
    extra = {}
    from epd.language.attention import cuda as cuda_attn

    if device.type == "cuda" and cuda_attn.FLASH_PAGED and engine.runner.graphs:
        engine.runner.attention.decode = "flash"
        engine.runner.graphs.clear()
        engine.runner.capture_graphs()
        extra = {"decode b1": epd_tpot(engine, 1, prompt, new), "decode b32": epd_tpot(engine, 32, prompt, new)}

    params = sum(p.numel() for p in engine.runner.model.parameters())
    capacity = engine.capacity_tokens
    epd32_tokens: dict[str, list[int]] = {}
    if fp32_tokens:  # the same weights in float32: epd must give transformers' float32 tokens
        del engine
        gc.collect()
        torch.cuda.empty_cache()
        cfg32 = EngineConfig(kv_tokens=16384, max_batch_tokens=4096, graph_batch_sizes=[1, 2, 4])
        tensors = ((k, v.to(device, torch.float32)) for k, v in state.items())
        engine = LanguageEngine(TextSide(spec), cfg32, device, torch.float32, tensors=tensors)
        engine.warm_up()
        progress("epd: the same prompts in float32")
        epd32_tokens, _ = epd_run(engine, check_prompts, 16)
    print_correctness(
        check_prompts, checks, hf_tokens, hf_logits, fp32_tokens, fp32_logits, epd32_tokens, eager_tokens, dtype
    )
    attn_flops = 2 * prefill_tokens**2 * spec.num_heads * spec.head_dim * spec.num_layers  # causal QK and PV
    floor = {
        "decode b1": weight_bytes / bw,  # bw counts every byte moved; a decode step reads the weights once
        "decode b32": (weight_bytes + 32 * (prompt + new) * kv_per_token) / bw,
        f"prefill {prefill_tokens}": (2 * params * prefill_tokens + attn_flops) / flops,
        f"concurrent @{context}": (budget - weight_bytes) / (context * kv_per_token),
    }
    target = {"decode b1": 5e-3, "decode b32": 8e-3, f"prefill {prefill_tokens}": 0.45, f"concurrent @{context}": None}
    if device.type == "cuda":
        print(f"\nceilings: copy {bw / 1e9:.0f} GB/s (read + write), bf16 matmul {flops / 1e12:.0f} TFLOP/s")
    else:
        print("\nceilings: not measured on CPU (floor columns are '-')")
    print(f"epd KV cache: {capacity} tokens")
    print(
        f"\n| work ({DTYPE_NAMES.get(dtype, dtype)}) | epd | transformers | floor | epd / transformers | epd / floor | target |"
    )
    print("|---|---|---|---|---|---|---|")
    for key in ours:
        e, b, f = ours[key], base[key], floor[key]
        if key.startswith("concurrent"):
            print(
                f"| {key} (sequences) | {e:.0f} | {_count(b)} | {_count(f)} | {_ratio(e, b, 2)} | {_ratio(e, f, 2)} | - |"
            )
            continue
        t = target[key]
        tgt = f"≤ {t * 1e3:.0f} ms {'met' if e <= t else 'missed'}" if not quick else "-"
        note = f" (flash decode: {extra[key] * 1e3:.2f} ms)" if key in extra else ""
        print(f"| {key} | {_ms(e)}{note} | {_ms(b)} | {_ms(f)} | {_ratio(e, b)} | {_ratio(e, f, 2)} | {tgt} |")


if __name__ == "__main__":
    main()
