"""Will the run fit? Each rank's memory need against what its host or GPU has, before any rank starts.

Per rank, in the run's dtype: the weights its role loads (an encoder its towers, a language instance
the decoder, a colocated one both), counted exactly from the checkpoint's config by building the
modules on the meta device (nothing allocated); for a language role the KV cache the engine will
allocate at least; a stated activation margin for one full-budget step; and the runtime itself.
Ranks on the CPU share the host's MemAvailable; ranks on a GPU share its free memory.

The activation margins assume fused attention (flash / memory-efficient SDPA, no [L, L] scores)
and count one layer's live tensors at the full token budget; the encoder's embedding caches grow
as they fill and are reported beside the need, not in it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

if TYPE_CHECKING:
    from epd.config import RunConfig

GiB = 1 << 30
RUNTIME_BYTES = {"cpu": GiB, "cuda": GiB}
"""Per rank besides the model: on CPU the Python process with torch and transformers imported (0.75 GiB
resident, measured), on a GPU the CUDA context, cuBLAS workspaces and allocator slack; 1 GiB each."""
AUDIO_ROWS_PER_TOKEN = 2
"""Rows inside an audio tower per output token: Qwen2-Audio's encoder runs 50 rows/s for 25 tokens/s
(Qwen3-Omni's fewer), so 2 bounds both."""


@dataclass(frozen=True, kw_only=True)
class RankMemory:
    """One rank's need, in bytes."""

    rank: int
    role: str
    place: str
    """``cpu`` or ``cuda:<index>``: the memory the rank draws on (shared with the other ranks there)."""
    weights: int
    kv_cache: int
    kv_tokens: int
    activations: int
    runtime: int

    @property
    def total(self) -> int:
        return self.weights + self.kv_cache + self.activations + self.runtime


@dataclass(frozen=True, kw_only=True)
class MemoryEstimate:
    """What a run needs where, and what is there (``available``: bytes per place; a place without a
    number is not checked)."""

    model: str
    dtype: torch.dtype
    ranks: list[RankMemory]
    available: dict[str, int]
    tower_bytes: int
    """The encoder's modules (towers and what ``encode`` uses beside them): parameters and buffers."""
    decoder_bytes: int
    """The language model's parameters as the engine builds them."""
    cache_bytes: int
    """Encoder embedding caches at their configured size, all encoder ranks (they grow as they fill)."""

    def needed(self) -> dict[str, int]:
        """Bytes needed per place, summed over the ranks placed there."""
        out: dict[str, int] = {}
        for r in self.ranks:
            out[r.place] = out.get(r.place, 0) + r.total
        return out

    def short(self) -> list[str]:
        """Places whose need passes what is available there."""
        return [p for p, need in self.needed().items() if p in self.available and need > self.available[p]]

    def as_dict(self) -> dict[str, Any]:
        """The estimate as plain data (for logs and results)."""
        return {
            "model": self.model,
            "dtype": str(self.dtype).removeprefix("torch."),
            "tower_bytes": self.tower_bytes,
            "decoder_bytes": self.decoder_bytes,
            "cache_bytes": self.cache_bytes,
            "needed_bytes": self.needed(),
            "available_bytes": dict(self.available),
            "ranks": [{**vars(r), "total": r.total} for r in self.ranks],
        }

    def summary(self) -> str:
        """One line per place and per rank, in GiB."""
        lines = []
        for place, need in self.needed().items():
            ranks = [r for r in self.ranks if r.place == place]
            have = self.available.get(place)
            have_text = "unknown" if have is None else f"{_gib(have)} GiB available"
            who = ", ".join(str(r.rank) for r in ranks)
            lines.append(f"{place} (ranks {who}): needs {_gib(need)} GiB, {have_text}")
            lines += [f"  {_rank_line(r)}" for r in ranks]
        if self.cache_bytes:
            lines.append(
                f"(+ up to {_gib(self.cache_bytes)} GiB of encoder embedding caches as they fill: encoder.cache_*_bytes)"
            )
        return "\n".join(lines)


def estimate_memory(
    cfg: RunConfig,
    available: dict[str, int] | None = None,
    device_type: str | None = None,
    ranks_here: Sequence[int] | None = None,
) -> MemoryEstimate:
    """The run's memory need per rank and place. ``available`` (bytes per place, ``cpu`` or
    ``cuda:<i>``) replaces the measured numbers, ``device_type`` (``cpu``/``cuda``) the run's device;
    ``ranks_here`` are the ranks on this host in local-rank order (None: every rank of the topology,
    as ``python -m epd.run`` and single-node torchrun place them)."""
    from transformers import AutoConfig

    from epd.models.checkpoint import resolve_checkpoint, torch_dtype
    from epd.models.registry import detect_family

    if device_type is None:  # as epd.launch.device.rank_device: auto is cuda when a GPU is visible
        device_type = "cpu" if cfg.device == "cpu" or not torch.cuda.is_available() else "cuda"
    dtype = torch_dtype(cfg.model.dtype, torch.device(device_type))
    ckpt = resolve_checkpoint(cfg.model)
    family = detect_family(ckpt)
    config = AutoConfig.from_pretrained(ckpt)
    towers = family.build_towers(config, "meta", dtype)
    spec = family.decoder_spec(config)
    parts = _Parts(cfg, device_type, dtype, towers, spec)
    ranks = list(range(cfg.topology.world_size)) if ranks_here is None else list(ranks_here)
    num_gpus = torch.cuda.device_count() if available is None else sum(p.startswith("cuda:") for p in available)
    places = {rank: _place(cfg, device_type, rank, local, num_gpus) for local, rank in enumerate(ranks)}
    needs = [
        parts.rank(rank, cfg.topology.instance_at(rank).role, places[rank], cfg.topology.instance_at(rank).tp)
        for rank in ranks
    ]
    encoders = sum(1 for rank in ranks if rank in cfg.topology.encoder_ranks)
    return MemoryEstimate(
        model=f"{family.name} ({Path(ckpt).name})",
        dtype=dtype,
        ranks=needs,
        available=measure_available(set(places.values())) if available is None else dict(available),
        tower_bytes=parts.tower_bytes,
        decoder_bytes=parts.decoder_bytes,
        cache_bytes=encoders * (cfg.encoder.cache_device_bytes + cfg.encoder.cache_host_bytes),
    )


def check_memory(
    cfg: RunConfig,
    available: dict[str, int] | None = None,
    device_type: str | None = None,
    ranks_here: Sequence[int] | None = None,
) -> None:
    """``ValueError`` naming the numbers and what to change when a place cannot hold its ranks'
    need (arguments as ``estimate_memory``)."""
    estimate = estimate_memory(cfg, available, device_type, ranks_here)
    short = estimate.short()
    if not short:
        return
    where = "; ".join(
        f"{p} needs {_gib(estimate.needed()[p])} GiB, {_gib(estimate.available[p])} GiB available" for p in short
    )
    raise ValueError(
        f"the run does not fit in memory: {where} ({estimate.model}, {str(estimate.dtype).removeprefix('torch.')})\n"
        f"{estimate.summary()}\n"
        f"To fit, change: {'; '.join(_advice(cfg, estimate, short))}"
    )


def measure_available(places: set[str]) -> dict[str, int]:
    """Free bytes per place: MemAvailable of /proc/meminfo for ``cpu``; for ``cuda:<i>`` the GPU's free
    memory, from NVML when it is installed (no CUDA context), else ``torch.cuda.mem_get_info``."""
    out = {place: _gpu_free(int(place.split(":")[1])) for place in places if place.startswith("cuda:")}
    free = _mem_available() if "cpu" in places else None
    return out if free is None else {**out, "cpu": free}


class _Parts:
    """Per-role pieces of the need, computed once for all ranks."""

    def __init__(self, cfg: RunConfig, device_type: str, dtype: torch.dtype, towers: Any, spec: Any) -> None:
        from transformers.initialization import no_init_weights

        from epd.language.models import QwenDecoder
        from epd.models.families.towers import module_bytes

        self.device_type, self.itemsize = device_type, dtype.itemsize
        self.tower_bytes = module_bytes(towers)
        with no_init_weights():  # random init of meta tensors is wasted work
            decoder = QwenDecoder(spec, None, device="meta")
        self.decoder_bytes = sum(p.numel() for p in decoder.parameters()) * self.itemsize  # the engine casts all
        self.encoder_activations = _tower_activations(towers, cfg.encoder.max_batch_tokens, self.itemsize)
        self.kv_tokens = _kv_tokens(cfg.engine, device_type)
        # as epd.language.runner.ModelRunner.kv_bytes_per_token
        self.kv_per_token = 2 * spec.num_layers * spec.num_kv_heads * spec.head_dim * self.itemsize
        self.num_kv_heads = spec.num_kv_heads
        self.language_activations = _decoder_activations(spec, cfg.engine, self.itemsize)

    def rank(self, rank: int, role: str, place: str, tp: int = 1) -> RankMemory:
        """One rank's need; a rank of a ``tp``-way instance holds 1/tp of the decoder and of its KV heads
        (at least one KV head: fewer KV heads than ranks are replicated)."""
        encoder, language = role in ("encoder", "colocated"), role in ("language", "colocated", "prefill", "decode")
        kv_tokens = self.kv_tokens if language else 0
        kv_share = max(1, self.num_kv_heads // tp) / self.num_kv_heads
        return RankMemory(
            rank=rank,
            role=role,
            place=place,
            weights=(self.tower_bytes if encoder else 0) + (self.decoder_bytes // tp if language else 0),
            kv_cache=int(kv_tokens * self.kv_per_token * kv_share),
            kv_tokens=kv_tokens,
            # a colocated rank runs its tower and its engine steps one after the other
            activations=max(self.encoder_activations if encoder else 0, self.language_activations if language else 0),
            runtime=RUNTIME_BYTES[self.device_type],
        )


def _kv_tokens(engine: Any, device_type: str) -> int:
    """Tokens of the KV cache the engine allocates at least (as ``ModelRunner.allocate_kv``): ``kv_tokens``,
    else on CPU its fixed default, else on a GPU one full-budget step (it fills what is left after)."""
    from epd.language.runner import CPU_KV_TOKENS

    tokens = engine.kv_tokens
    if tokens is None:
        tokens = CPU_KV_TOKENS if device_type == "cpu" else engine.max_batch_tokens
    return max(2, tokens // engine.block_size + 1) * engine.block_size


def _decoder_activations(spec: Any, engine: Any, itemsize: int) -> int:
    """One full-budget step (``engine.max_batch_tokens`` tokens): one layer's live tensors per token
    (input, residual, normed and output rows; qkv, rotated q/k and attention output; the MLP's gate-up
    and product, for MoE the top-k experts' share), plus float32 logits for the sampled rows."""
    q, kv = spec.num_heads * spec.head_dim, spec.num_kv_heads * spec.head_dim
    inter = max(spec.intermediate_size, spec.num_experts_per_tok * spec.moe_intermediate_size)
    per_token = 4 * spec.hidden_size + 2 * (q + 2 * kv) + q + 3 * inter + spec.num_experts
    logits_rows = min(engine.max_num_seqs, engine.max_batch_tokens)
    return engine.max_batch_tokens * per_token * itemsize + logits_rows * spec.vocab_size * 4


def _tower_activations(towers: Any, max_tokens: int, itemsize: int) -> int:
    """The largest tower call (``encoder.max_batch_tokens`` output tokens): per row inside the tower,
    six rows of its width (hidden, residual, norm, qkv) and three of its MLP width."""
    worst = 0
    for module in towers.values():
        tcfg = getattr(module, "config", None)
        if tcfg is None:  # a projector: its output is the embeddings themselves
            continue
        width = getattr(tcfg, "d_model", None) or tcfg.hidden_size
        ffn = getattr(tcfg, "encoder_ffn_dim", None) or tcfg.intermediate_size
        merge = getattr(tcfg, "spatial_merge_size", None)
        rows = max_tokens * (merge**2 if merge else AUDIO_ROWS_PER_TOKEN)
        worst = max(worst, rows * (6 * width + 3 * ffn) * itemsize)
    return worst


def _place(cfg: RunConfig, device_type: str, rank: int, local_rank: int, num_gpus: int) -> str:
    """Where rank ``rank`` draws memory from; GPUs as ``epd.launch.device.gpu_index`` picks them."""
    if device_type == "cpu":
        return "cpu"
    from epd.launch.device import pinned_gpu

    gpu = pinned_gpu(cfg.topology, rank)
    if gpu is None:
        if num_gpus == 0:
            raise ValueError("device=cuda but no CUDA GPU is visible; use device=cpu (or device=auto)")
        gpu = local_rank % num_gpus
    return f"cuda:{gpu}"


def _mem_available() -> int | None:
    meminfo = Path("/proc/meminfo")
    lines = meminfo.read_text().splitlines() if meminfo.exists() else []
    found = [int(line.split()[1]) * 1024 for line in lines if line.startswith("MemAvailable:")]  # kB
    return found[0] if found else None


def _gpu_free(index: int) -> int:
    try:  # NVML: no CUDA context in this (launcher) process
        return torch.cuda.get_device_properties(index).total_memory - torch.cuda.device_memory_used(index)
    except (ModuleNotFoundError, RuntimeError):
        return torch.cuda.mem_get_info(index)[0]


def _advice(cfg: RunConfig, estimate: MemoryEstimate, short: list[str]) -> list[str]:
    """What to change, the biggest lever first."""
    tips = []
    if estimate.dtype == torch.float32:
        tips.append("model.dtype=bfloat16 (halves weights, KV cache and activations)")
    if any(p == "cpu" for p in short):
        tips.append("device=cuda (on a machine with a GPU)")
    crowded = [p for p in short if p != "cpu" and sum(r.place == p for r in estimate.ranks) > 1]
    if crowded:
        tips.append(f"fewer ranks on one GPU ({', '.join(crowded)}): set the topology instances' gpu, or use more GPUs")
    kv_tokens = max(r.kv_tokens for r in estimate.ranks)
    if kv_tokens:
        tips.append(f"a smaller engine.kv_tokens (the KV cache holds {kv_tokens} tokens)")
        tips.append(f"a smaller engine.max_batch_tokens (now {cfg.engine.max_batch_tokens})")
    if any(r.role != "language" for r in estimate.ranks):
        tips.append(f"a smaller encoder.max_batch_tokens (now {cfg.encoder.max_batch_tokens})")
    tips.append("a smaller checkpoint (model.path=..., or a smaller model.shape)")
    return tips


def _rank_line(r: RankMemory) -> str:
    parts = [f"weights {_gib(r.weights)}"]
    if r.kv_cache:
        parts.append(f"KV cache {_gib(r.kv_cache)} ({r.kv_tokens} tokens)")
    parts += [f"activations {_gib(r.activations)}", f"runtime {_gib(r.runtime)}"]
    return f"rank {r.rank} {r.role}: {' + '.join(parts)} = {_gib(r.total)} GiB"


def _gib(n: int) -> str:
    return f"{n / GiB:.1f}"
