"""The language engine's host work per step, with the model taken out (CPU; any machine).

    python -m epd.bench.host                    # batch 1 and 32, 128- and 4096-token prompts

Each step of a decode-only batch runs the scheduler, the block manager (prefix-cache
registration) and the token bookkeeping; on a GPU this host time is the gap between two graph
replays, during which the device waits. The model is replaced by a function that returns one token
per sampled sequence, so only that host work is timed (median of repeated 50-step runs).
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from epd.bench.engine import TextSide
from epd.language import EngineConfig, LanguageEngine
from epd.language.models import DecoderSpec
from epd.protocol import NewRequest, SamplingParams

TINY = DecoderSpec(
    vocab_size=1000, hidden_size=32, intermediate_size=64, num_layers=1, num_heads=2, num_kv_heads=1,
    head_dim=16, rms_norm_eps=1e-6, rope_theta=1e4, rope_style="1d", mrope_section=None,
    qkv_bias=True, qk_norm=False, tie_embeddings=False,
)  # fmt: skip


def host_step_us(batch: int, prompt: int, steps: int = 50, reps: int = 5) -> float:
    """Median microseconds of one decode step's host work for ``batch`` sequences of ``prompt`` tokens."""
    cfg = EngineConfig(max_batch_tokens=batch * prompt, max_num_seqs=max(batch, 1), kv_tokens=batch * (prompt + 2048))
    engine = LanguageEngine(TextSide(TINY), cfg, torch.device("cpu"))
    engine.runner.run = lambda b: [1] * len(type(engine.runner).sampled_seqs(b))  # no model: host work only
    for i in range(batch):  # distinct prompts: every full block is a new prefix-cache entry
        ids = [(i * 7919 + j) % TINY.vocab_size for j in range(prompt)]
        sampling = SamplingParams(max_tokens=1 + steps * (reps + 1), ignore_eos=True)
        engine.add_request(NewRequest(request_id=f"r{i}", prompt_token_ids=ids, items=[], sampling=sampling))
    engine.step()  # the prefill step
    times = []
    for _ in range(reps + 1):
        start = time.perf_counter()
        for _ in range(steps):
            engine.step()
        times.append((time.perf_counter() - start) / steps * 1e6)
    return statistics.median(times[1:])


def main(argv: list[str] | None = None) -> None:
    argparse.ArgumentParser(
        prog="python -m epd.bench.host", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    ).parse_args(argv)
    print("| batch | prompt tokens | host µs per decode step |")
    print("|---|---|---|")
    for batch in (1, 32):
        for prompt in (128, 4096):
            print(f"| {batch} | {prompt} | {host_step_us(batch, prompt):.1f} |", flush=True)


if __name__ == "__main__":
    main()
