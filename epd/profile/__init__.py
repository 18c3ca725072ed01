"""``epd.profile``: measure the cost model the simulator needs on the machine at hand (``docs/simulator.md``).

``run_profile(cfg)`` returns the profile (``epd.profile.schema``); ``python -m epd.profile`` writes
it to ``<run dir>/profile.json``.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import tempfile
import time
from pathlib import Path

import torch

from epd.config import to_dict
from epd.launch.device import rank_device
from epd.metrics.environment import environment_info
from epd.models import detect_family, resolve_checkpoint, torch_dtype
from epd.profile.config import ProfileOptions, ProfileRunConfig
from epd.profile.schema import FORMAT, VERSION, check_profile
from epd.profile.timing import use_statistic

log = logging.getLogger("epd.profile")


def hardware_info(device: torch.device, threads: int) -> dict:
    from epd.profile.host import effective_cores

    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        name, memory, count = props.name, props.total_memory, torch.cuda.device_count()
    else:
        name, count = "cpu", 1
        memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    return {"device": name, "device_count": count, "cpu_count": os.cpu_count() or 1, "threads": threads,
            "memory_bytes": memory, **effective_cores()}  # fmt: skip


def run_profile(cfg: ProfileRunConfig) -> dict:
    """Measure every section of the profile for ``cfg.run.model`` on ``cfg.run.device``."""
    from transformers import AutoProcessor

    from epd.profile.encoder import measure_encoder
    from epd.profile.frontend import measure_frontend
    from epd.profile.language import measure_language
    from epd.profile.transfer import measure_transfer

    run = cfg.run
    device = rank_device(run.device, run.topology, 0, 0)
    opts: ProfileOptions = cfg.profile.resolved("cpu" if device.type == "cpu" else "cuda")
    threads = opts.threads or max(1, (os.cpu_count() or 2) // 2)
    statistic = opts.statistic if opts.statistic != "auto" else ("mean" if device.type == "cpu" else "median")
    use_statistic(statistic)
    if device.type == "cpu":
        torch.set_num_threads(threads)
    ckpt = resolve_checkpoint(run.model)
    family = detect_family(ckpt)
    dtype = torch_dtype(run.model.dtype, device)
    started = time.time()
    processor = AutoProcessor.from_pretrained(ckpt)
    side = family.load_language(ckpt, run.model.random_init)
    log.info("profiling %s (%s, %s) on %s", ckpt, family.name, dtype, device)
    frontend = measure_frontend(processor, side, family.modalities, opts.quick, opts.repeats)
    tower = family.load_encoder(ckpt, run.model.random_init, device, dtype, run.model.tower_attention)
    with tempfile.TemporaryDirectory(prefix="epd-profile-") as tmp:
        own = dataclasses.replace(run.media, allowed_dirs=[*(run.media.allowed_dirs or []), str(Path(tmp).resolve())])
        media = measure_encoder(tower, own, run.scheduler, opts, device, Path(tmp), run.encoder)
    del tower
    frontend["probe_s"] = {m: r.probe_s for m, r in media.items()}
    shapes = {m: r.shapes for m, r in media.items()}
    first = family.modalities[0]
    language = measure_language(side, run.engine, device, dtype, opts, media[first].sample, frontend["prompt"])
    data_plane = measure_transfer(
        "cpu" if device.type == "cpu" else "cuda", opts.transfer_backends, opts.transfer_sizes
    )
    if opts.allreduce_gbps is not None:
        data_plane["parallel"]["allreduce_bw_bytes_per_s"] = opts.allreduce_gbps * 1e9
        data_plane["parallel"]["source"] = "given: profile.allreduce_gbps"
    if opts.allreduce_latency_us is not None:
        data_plane["parallel"]["allreduce_latency_s"] = opts.allreduce_latency_us * 1e-6
    spec = side.spec
    first = shapes[first]
    profile = {
        "format": FORMAT,
        "version": VERSION,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "duration_s": time.time() - started,
        "hardware": hardware_info(device, threads),
        "software": environment_info(),
        "model": {
            "name": run.model.name or run.model.tiny or str(ckpt),
            "family": family.name,
            "checkpoint": str(ckpt),
            "dtype": str(dtype).removeprefix("torch."),
            "dtype_bytes": dtype.itemsize,
            "hidden_size": first["embeds"][1],
            "num_layers": spec.num_layers,
            "num_heads": spec.num_heads,
            "num_kv_heads": spec.num_kv_heads,
            "head_dim": spec.head_dim,
            "vocab_size": spec.vocab_size,
            "weight_bytes": language.pop("weight_bytes"),
            "embed_rows": 1 + (first["deepstack"][0] if "deepstack" in first else 0),
            "modalities": list(family.modalities),
            "config": to_dict(run.model),
        },
        "config": {"engine": to_dict(run.engine), "encoder": to_dict(run.encoder),
                   "scheduler": to_dict(run.scheduler), "media": to_dict(run.media), "options": to_dict(opts),
                   "statistic": statistic},
        "frontend": frontend,
        "encoder": {m: r.costs for m, r in media.items()},
        "language": language,
        **data_plane,
    }  # fmt: skip
    check_profile(profile)
    return profile


__all__ = ["ProfileOptions", "ProfileRunConfig", "run_profile"]
