"""The baseline of seed_table: transformers' `generate` on the monolithic model, one request at a time.

    python experiments/seed_table/baseline.py --out OUT/transformers --requests 3 \\
        [--rates 0.1,0.3,0.6 --phase-requests 3,4,7] [-- hydra overrides, e.g. model.dtype=float32]

What a researcher without epd would run: load the model with transformers, and for each request
open its images (PIL), apply the chat template and the processor, and call `generate` (greedy,
exactly `output_len` new tokens, as epd's ignore_eos). The requests are epd's own (the same
config, seed and files: `+experiment=seed_table` and the same phase overrides as the epd jobs).

A one-at-a-time server's timing does not depend on when requests arrive, only on how long each
one waits for the previous ones: so the script times `--requests` requests back to back (after a
short warm-up), then replays every phase's arrival schedule against those service times (FCFS,
one server; request j takes the service time of measured request j mod K) to get TTFT, TPOT and
end-to-end latency under the load. It says so in its output and in results.json ("baseline").
The results.json it writes has the layout of epd's, with "label": "transformers (one at a time)".
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from transformers.generation.streamers import BaseStreamer

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

LABEL = "transformers (one at a time)"


def parse_args(argv: list[str]) -> tuple[argparse.Namespace, list[str]]:
    overrides = argv[argv.index("--") + 1 :] if "--" in argv else []
    argv = argv[: argv.index("--")] if "--" in argv else argv
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, required=True, help="directory for results.json")
    p.add_argument("--work-dir", type=Path, default=None, help="where the request media are written (default: --out)")
    p.add_argument("--requests", type=int, default=3, help="requests timed back to back (K)")
    p.add_argument("--rates", default="0.1,0.3,0.6", help="the epd jobs' workload.phase_rates")
    p.add_argument("--phase-requests", default="64,64,64", help="the epd jobs' workload.phase_requests")
    return p.parse_args(argv), overrides


def compose_config(rates: str, counts: str, run_dir: Path, overrides: list[str]):
    from hydra import compose, initialize_config_dir
    from omegaconf import OmegaConf

    from epd.config import build_run_config
    from epd.run import CONF_DIR  # registers the schemas and resolvers

    phase = [f"workload.phase_rates=[{rates}]", f"workload.phase_requests=[{counts}]"]
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        dcfg = compose("config", ["+experiment=seed_table", *phase, *overrides])
    raw = OmegaConf.to_container(dcfg, resolve=True)
    raw["run_dir"] = str(run_dir)
    return build_run_config(raw)


class TokenTimes(BaseStreamer):
    """A `generate` streamer that notes when each new token is ready (the first `put` is the prompt)."""

    def __init__(self) -> None:
        self.times: list[float] = []
        self._prompt_seen = False

    def put(self, value) -> None:
        if self._prompt_seen:
            value.tolist()  # generate hands over CPU tokens: the step has finished
            self.times.append(time.perf_counter())
        self._prompt_seen = True

    def end(self) -> None:
        pass


def serve(model, processor, request, device, max_new_tokens: int) -> dict:
    """Run one request start to end; times in seconds from its start."""
    import torch
    from PIL import Image

    from epd.frontend.chat import to_template_messages

    start = time.perf_counter()
    messages, media = to_template_messages(request.messages)
    images = [Image.open(m.source.removeprefix("file://")).convert("RGB") for m in media]
    loaded = time.perf_counter()
    text = processor.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    inputs = processor(text=[text], images=images or None, return_tensors="pt").to(device)
    prepared = time.perf_counter()
    streamer = TokenTimes()
    with torch.inference_mode():
        model.generate(
            **inputs,
            max_new_tokens=max_new_tokens,
            min_new_tokens=max_new_tokens if request.ignore_eos else None,
            do_sample=False,
            streamer=streamer,
        )
    return {
        "load_s": loaded - start,
        "preprocess_s": prepared - loaded,
        "token_s": [t - start for t in streamer.times],
        "num_prompt_tokens": int(inputs["input_ids"].shape[1]),
    }


def replay(requests, profiles: list[dict]):
    """Records of every measured request under its phase's arrivals, served FCFS by one server.

    Phases follow each other as in epd (a phase starts when the previous one has drained)."""
    from epd.metrics import RequestRecord

    records, phase_starts, clock, k = [], [], 0.0, 0
    for phase in sorted({r.phase for r in requests}):
        phase_starts.append(clock)
        free = clock
        for request in sorted((r for r in requests if r.phase == phase), key=lambda r: r.arrival_s):
            profile = profiles[k % len(profiles)]
            k += 1
            arrival = clock + request.arrival_s
            start = max(arrival, free)
            tokens = [start + t for t in profile["token_s"]]
            prepared = start + profile["load_s"] + profile["preprocess_s"]
            stamps = {"tokenized": start, "fetch_end": start + profile["load_s"], "preprocess_end": prepared}
            stamps["first_token"] = tokens[0]
            records.append(
                RequestRecord(
                    id=request.id,
                    arrival=arrival,
                    phase=phase,
                    timestamps=stamps,
                    token_times=tokens,
                    output_token_ids=[0] * len(tokens),
                    num_prompt_tokens=profile["num_prompt_tokens"],
                )
            )
            free = tokens[-1]
        clock = free
    return records, phase_starts, clock


def main(argv: list[str] | None = None) -> int:
    import torch
    from transformers import AutoConfig, AutoModelForImageTextToText, AutoProcessor

    from epd.config import to_dict
    from epd.metrics import environment_info, format_table
    from epd.metrics.loggers.base import to_jsonable
    from epd.metrics.memory import peak_memory
    from epd.metrics.phases import summarize_run
    from epd.models import resolve_checkpoint, torch_dtype
    from epd.workload import build_workload

    args, overrides = parse_args(list(sys.argv[1:] if argv is None else argv))
    args.out.mkdir(parents=True, exist_ok=True)
    work_dir = args.work_dir or args.out
    cfg = compose_config(args.rates, args.phase_requests, work_dir, overrides)
    device = torch.device("cuda" if cfg.device != "cpu" and torch.cuda.is_available() else "cpu")
    dtype = torch_dtype(cfg.model.dtype, device)
    ckpt = resolve_checkpoint(cfg.model)
    processor = AutoProcessor.from_pretrained(ckpt)
    requests = build_workload(cfg.workload, work_dir / "media", tokenizer=processor.tokenizer)
    load_start = time.perf_counter()
    if cfg.model.random_init:
        with torch.device(device):
            model = AutoModelForImageTextToText.from_config(AutoConfig.from_pretrained(ckpt), dtype=dtype)
    else:
        model = AutoModelForImageTextToText.from_pretrained(ckpt, dtype=dtype).to(device)
    model.eval()
    print(
        f"baseline: {type(model).__name__} on {device} ({dtype}) in {time.perf_counter() - load_start:.1f} s",
        flush=True,
    )
    warmups = [r for r in requests if r.warmup]
    measured = sorted((r for r in requests if not r.warmup), key=lambda r: (r.phase, r.arrival_s))
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    for request in warmups[:1] or measured[:1]:  # kernels, allocator and autotuning at the real shapes
        serve(model, processor, request, device, max_new_tokens=min(8, cfg.workload.output_len))
    k = max(1, min(args.requests, len(measured)))
    profiles = []
    for request in measured[:k]:
        profiles.append(serve(model, processor, request, device, cfg.workload.output_len))
        p = profiles[-1]
        tpot_ms = 1e3 * (p["token_s"][-1] - p["token_s"][0]) / max(1, len(p["token_s"]) - 1)
        print(
            f"baseline: {request.id}: {p['num_prompt_tokens']} prompt tokens, load {p['load_s']:.2f} s, "
            f"processor {p['preprocess_s']:.2f} s, TTFT {p['token_s'][0]:.2f} s, TPOT {tpot_ms:.1f} ms, "
            f"{len(p['token_s'])} tokens in {p['token_s'][-1]:.1f} s",
            flush=True,
        )
    records, phase_starts, end = replay(measured, profiles)
    wl = cfg.workload
    summary = summarize_run(
        records,
        max(end, 1e-9),
        phase_starts=phase_starts,
        phase_rates=wl.phase_rates,
        slo_ttft_ms=wl.slo_ttft_ms,
        slo_tpot_ms=wl.slo_tpot_ms,
    )
    summary["peak_memory"] = {"0": peak_memory(device)}
    note = (
        f"{k} request(s) timed back to back; the {len(measured)} requests of the phases replayed against "
        "those service times (FCFS, one request at a time)"
    )
    config = to_dict(cfg)
    config["topology"] = {"name": "transformers", "instances": []}
    results = {
        "label": LABEL,
        "baseline": {"method": note, "measured_requests": k, "profiles": profiles},
        "config": config,
        "environment": environment_info(),
        "summary": summary,
        "requests": records,
    }
    (args.out / "results.json").write_text(json.dumps(to_jsonable(results), indent=1, allow_nan=False))
    print(format_table(summary))
    print(f"baseline: {note}; results in {args.out / 'results.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
