"""The simulator's own knobs (``sim.*``) and the typed config of a simulated run.

A simulated run reads the same config tree as ``epd.run`` (model, topology, transfer, scheduler,
encoder, engine, workload, logger, media) plus ``profile`` (the cost model's file) and ``sim``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from epd.config import RunConfig, build_run_config, to_dict

ROLE_COUNTS = ("colocated", "encoders", "language", "prefill", "decode")
TOKENIZE_MODES = ("auto", "exact", "words")
TOKEN_TIMES = ("all", "ends", "auto")
RECORDS = ("all", "none", "auto")
CONTENTION = ("booked", "anticipate")


@dataclass(kw_only=True)
class SimOptions:
    """How the simulator builds the cluster and what it records (``sim.*`` on the command line)."""

    colocated: int = 0
    """Instances given as counts (any count > 0 replaces ``+topology``): colocated instances."""
    encoders: int = 0
    """Encoder instances (with ``language``, or ``prefill`` + ``decode``)."""
    language: int = 0
    """Language instances (prefill + decode)."""
    prefill: int = 0
    """Prefill instances (need ``decode`` instances)."""
    decode: int = 0
    """Decode instances."""
    tp: int = 1
    """Tensor-parallel degree of every language / prefill / decode instance given as counts."""
    gpus_per_node: int = 8
    """GPUs per node: ranks fill nodes in order; a transfer between nodes uses the inter-node link."""
    num_gpus: int | None = None
    """GPUs of the cluster: rank r of an instance without a ``gpu`` goes to GPU r mod num_gpus (as
    ``epd.run`` shares the GPUs of one host); None = a GPU per rank."""
    internode_gbps: float = 25.0
    """Inter-node bandwidth per GPU pair, GB/s (25 = a 200 Gb/s NIC per GPU). Assumed, not measured."""
    internode_latency_us: float = 10.0
    """Fixed cost of an inter-node transfer, µs (added to the profile's intra-node fixed cost)."""
    allreduce_gbps: float | None = None
    """Tensor-parallel all-reduce bus bandwidth, GB/s; None = the profile's ``parallel`` value."""
    allreduce_latency_us: float | None = None
    """Fixed cost of one all-reduce, µs; None = the profile's ``parallel`` value."""
    cpu_cores: float | None = None
    """CPU profiles: cores every rank, decode thread and the frontend share (None = the profile's
    ``effective_cores``: what other tenants left free when it was taken). A profile's times are of one
    thread, which a free core runs at full speed; epd's own threads then share the free cores."""
    shared_host: bool = True
    """CPU profiles: every rank shares one host's cores (as a CPU run of ``epd.run`` does); false puts each
    rank on a host of its own (a cluster of the profiled hosts, one rank each, its decode threads with it;
    the frontend on another)."""
    host_cores: int | None = None
    """GPU profiles: host cores per node for media decoding and the frontend (None = the profile's count)."""
    tokenize: str = "auto"
    """How prompts are sized: ``exact`` runs the checkpoint's chat template and tokenizer (as the
    frontend does), ``words`` counts one token per word inside the profile's template ids, ``auto``
    = exact for file workloads and words for synthetic ones (their text is ``input_len`` words)."""
    token_times: str = "auto"
    """``all``: every output token's time in the records; ``ends``: the first and last only (TPOT
    exact, ITL not recorded: for millions of requests); ``auto``: ``ends`` above 20000 requests."""
    records: str = "auto"
    """Per-request records in results.json / records.jsonl: ``all``, ``none`` (the summary alone, still
    computed from every record), ``auto`` = all up to 100000 requests."""
    contention: str = "anticipate"
    """How work sharing a device (a GPU, a host's cores) is slowed (``epd.sim.events.Device``): ``booked``
    = by the work already running when it starts; ``anticipate`` = also by the other workers' demand of
    the moment before, expected to go on (time-slicing slows the work that started first too)."""
    fast_forward: bool = True
    """Run stretches of identical decode steps (same batch, nothing arriving, no block shortage) as
    one event; the language scheduler would decide exactly the same (tests check the equality)."""
    max_sim_s: float = math.inf
    """Stop the simulated clock here (requests still in flight are recorded as failed)."""
    seed: int = 0
    """Reserved for stochastic cost noise (the simulator is deterministic today)."""

    def __post_init__(self) -> None:
        for key in (*ROLE_COUNTS, "tp", "gpus_per_node"):
            value = getattr(self, key)
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise ValueError(f"sim.{key}={value!r}: set an integer >= 0")
        if self.tp < 1 or self.gpus_per_node < 1:
            raise ValueError("sim.tp and sim.gpus_per_node must be >= 1")
        if self.tokenize not in TOKENIZE_MODES:
            raise ValueError(f"sim.tokenize={self.tokenize!r}: choose one of {', '.join(TOKENIZE_MODES)}")
        if self.contention not in CONTENTION:
            raise ValueError(f"sim.contention={self.contention!r}: choose one of {', '.join(CONTENTION)}")
        if self.records not in RECORDS:
            raise ValueError(f"sim.records={self.records!r}: choose one of {', '.join(RECORDS)}")
        if self.token_times not in TOKEN_TIMES:
            raise ValueError(f"sim.token_times={self.token_times!r}: choose one of {', '.join(TOKEN_TIMES)}")
        for key in ("internode_gbps", "allreduce_gbps", "cpu_cores", "host_cores", "num_gpus"):
            value = getattr(self, key)
            if value is not None and not value > 0:
                raise ValueError(f"sim.{key}={value!r}: set a value > 0")
        if not self.max_sim_s > 0:
            raise ValueError(f"sim.max_sim_s={self.max_sim_s}: set a duration > 0 (inf = until every request ends)")

    @property
    def counts_given(self) -> bool:
        return any(getattr(self, key) for key in ROLE_COUNTS)


@dataclass(kw_only=True)
class SimRunConfig:
    """A simulated run: the run's config, the profile file and the simulator's options."""

    run: RunConfig
    profile: str
    sim: SimOptions = field(default_factory=SimOptions)

    def __post_init__(self) -> None:
        if not self.profile or not Path(self.profile).is_file():
            raise ValueError(
                f"profile={self.profile!r}: no such file; make one with `python -m epd.profile hydra.run.dir=D` "
                "and pass profile=D/profile.json"
            )

    def to_dict(self) -> dict[str, Any]:
        """The config as results.json records it: the run's keys, ``profile`` and ``sim``."""
        return {**to_dict(self.run), "profile": self.profile, "sim": to_dict(self.sim)}


def build_sim_config(raw: dict[str, Any], extra_keys: tuple[str, ...] = ()) -> SimRunConfig:
    """Validate a resolved config mapping (``epd.run``'s keys plus ``profile`` and ``sim``).

    The run part is built with ``device=cpu``: the simulated cluster's devices come from the
    profile, not from this machine (the checks of ``epd.run`` would refuse 1000 GPUs here)."""
    from epd.config import from_dict

    data = {k: v for k, v in raw.items() if k not in ("hydra", *extra_keys)}
    profile = data.pop("profile", None)
    sim = from_dict(SimOptions, data.pop("sim", None) or {}, "sim")
    data["device"] = "cpu"
    run = build_run_config(data)
    return SimRunConfig(run=run, profile=str(Path(str(profile)).expanduser().absolute()) if profile else "", sim=sim)
