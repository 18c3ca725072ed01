"""GPU: where a decode step and a 16k prefill of the language engine spend their time, and the
first prefill over cached blocks after ``warm_up`` (Qwen2.5-7B shape, random weights, bf16).

    python experiments/profiles/engine_profiles.py

Prints decode time per token at batch 1 and 32, the kernels of ten batch-1 decode steps (graph
replays), prefill times of 16k tokens and the kernels of one, then the step times of two prompts
served together followed by prompts that share their first block (a prefix-cache hit).
"""

import time

import torch
from torch.profiler import ProfilerActivity, profile

from epd.bench.engine import TextSide, epd_prefill, epd_run, epd_tpot, qwen25_7b_config
from epd.language import EngineConfig, LanguageEngine
from epd.language.models import DecoderSpec
from epd.protocol import NewRequest, SamplingParams


def kernels(prof, per: int, top: int) -> None:
    ev = [e for e in prof.key_averages() if e.self_device_time_total > 0 and not e.key.startswith("aten::")]
    total = sum(e.self_device_time_total for e in ev) / per / 1e3
    print(f"  kernel time {total:.3f} ms, {sum(e.count for e in ev) / per:.0f} kernels (per step)")
    for e in sorted(ev, key=lambda e: -e.self_device_time_total)[:top]:
        print(f"  {e.self_device_time_total / per / 1e3:8.3f} ms  x{e.count / per:6.1f}  {e.key[:80]}")


def serve(engine: LanguageEngine, tag: str, prompts: list[list[int]]) -> None:
    tag = f"{tag}.{time.monotonic_ns()}"  # an engine drops a repeat of a request id it has served
    for i, ids in enumerate(prompts):
        sampling = SamplingParams(max_tokens=4, ignore_eos=True)
        engine.add_request(NewRequest(request_id=f"{tag}{i}", prompt_token_ids=ids, items=[], sampling=sampling))
    times = []
    while engine.has_work:
        start = time.perf_counter()
        engine.step()
        torch.cuda.synchronize()
        times.append(round((time.perf_counter() - start) * 1e3, 1))
    print(f"  {tag}: step ms {times}")


def main() -> None:
    spec = DecoderSpec.from_hf_config(qwen25_7b_config(), rope_style="1d", qk_norm=False, qkv_bias=True, tie=False)
    cfg = EngineConfig(max_batch_tokens=16384, max_num_seqs=256)
    engine = LanguageEngine(TextSide(spec), cfg, torch.device("cuda"), torch.bfloat16)
    engine.warm_up()
    print(f"decode b1 {epd_tpot(engine, 1, 128, 128) * 1e3:.3f} ms, b32 {epd_tpot(engine, 32, 128, 128) * 1e3:.3f} ms")
    sampling = SamplingParams(max_tokens=40, ignore_eos=True)
    engine.add_request(NewRequest(request_id="p", prompt_token_ids=list(range(100, 228)), items=[], sampling=sampling))
    for _ in range(5):
        engine.step()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        for _ in range(10):
            engine.step()
        torch.cuda.synchronize()
    print("decode, batch 1:")
    kernels(prof, 10, 14)
    while engine.has_work:
        engine.step()
    print("prefill 16k:", [round(epd_prefill(engine, 16384) * 1e3, 1) for _ in range(3)], "ms")
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        epd_run(engine, [torch.randint(0, 150000, (16384,)).tolist()], 1)
        torch.cuda.synchronize()
    kernels(prof, 1, 12)
    print("prefix-cache hits after warm-up:")
    prefix = list(range(1000, 1016))

    def fresh(n: int) -> list[int]:
        return prefix + torch.randint(0, 150000, (n,)).tolist()

    serve(engine, "two-at-once", [fresh(2704), fresh(2704)])
    serve(engine, "first-hit", [fresh(2704)])
    serve(engine, "second-hit", [fresh(2704)])


if __name__ == "__main__":
    main()
