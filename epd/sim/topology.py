"""The simulated cluster: instances with their roles, ranks, GPUs and nodes.

A topology comes from ``+topology=<name>`` (``epd.launch.topology.TopologyConfig``, the same
instances ``epd.run`` would start) or from counts on the command line (``sim.encoders=3
sim.language=2 sim.tp=2``), which may also ask for several colocated instances (data-parallel
replicas, which ``epd.run`` does not start yet). Ranks are numbered as ``TopologyConfig`` numbers
them: instance i takes the next ``tp`` ranks, its leader is the first.

Placement: an instance whose topology names a ``gpu`` sits there (several may share one);
otherwise rank r gets GPU r of the cluster, ``gpus_per_node`` GPUs per node. On a CPU profile every
rank shares the one host's cores, as the ranks of a CPU run of ``epd.run`` do.
"""

from __future__ import annotations

from dataclasses import dataclass

from epd.launch.topology import InstanceConfig, TopologyConfig
from epd.sim.config import SimOptions


@dataclass(frozen=True, kw_only=True)
class SimInstance:
    """One instance of the simulated cluster."""

    index: int
    role: str
    leader: int
    """Its first rank (control messages go there)."""
    tp: int = 1
    modalities: tuple[str, ...] | None = None
    gpu: int = 0
    """Global GPU index of its leader (the instance spans ``tp`` GPUs from there, or shares one)."""
    node: int = 0

    @property
    def encodes(self) -> bool:
        return self.role in ("encoder", "colocated")

    @property
    def takes_prompts(self) -> bool:
        return self.role in ("colocated", "language", "prefill")


@dataclass(frozen=True, kw_only=True)
class SimTopology:
    name: str
    instances: tuple[SimInstance, ...]

    @property
    def world_size(self) -> int:
        return sum(inst.tp for inst in self.instances)

    @property
    def num_gpus(self) -> int:
        """GPUs the cluster occupies (instances sharing a GPU count it once)."""
        return len({(inst.gpu + k) for inst in self.instances for k in range(inst.tp)})

    def with_role(self, *roles: str) -> list[SimInstance]:
        return [inst for inst in self.instances if inst.role in roles]

    @property
    def encoders(self) -> list[SimInstance]:
        return [inst for inst in self.instances if inst.encodes]

    @property
    def prompt_instances(self) -> list[SimInstance]:
        """Where the frontend sends prompts: colocated and language instances, or the prefill ones."""
        return [inst for inst in self.instances if inst.takes_prompts]

    def to_dict(self) -> dict:
        """The topology as results.json's ``config.topology`` records it."""
        return {
            "name": self.name,
            "instances": [
                {"role": i.role, "tp": i.tp, "gpu": i.gpu, "modalities": list(i.modalities) if i.modalities else None}
                for i in self.instances
            ],
        }


def counts_name(opts: SimOptions) -> str:
    """A short name for a topology given as counts: ``3e2l``, ``2e1p1d_tp2``, ``4c``."""
    parts = [
        f"{n}{tag}"
        for n, tag in (
            (opts.colocated, "c"),
            (opts.encoders, "e"),
            (opts.language, "l"),
            (opts.prefill, "p"),
            (opts.decode, "d"),
        )
        if n
    ]
    return "".join(parts) + (f"_tp{opts.tp}" if opts.tp > 1 else "")


def from_counts(opts: SimOptions) -> SimTopology:
    """The topology of ``sim.colocated/encoders/language/prefill/decode`` (checked like ``TopologyConfig``)."""
    if opts.colocated and (opts.encoders or opts.language or opts.prefill or opts.decode):
        raise ValueError("sim.colocated instances do every role: give them alone (no encoders, language, prefill)")
    if not opts.colocated:
        # the same rules as a topology file: at least one encoder, language xor prefill+decode
        roles = [InstanceConfig(role="encoder")] * opts.encoders
        roles += [InstanceConfig(role=r) for r, n in (("language", opts.language), ("prefill", opts.prefill),
                                                       ("decode", opts.decode)) for _ in range(n)]  # fmt: skip
        TopologyConfig(name=counts_name(opts), instances=roles)
    specs = [("colocated", 1)] * opts.colocated + [("encoder", 1)] * opts.encoders
    specs += [(role, opts.tp) for role in ("language", "prefill", "decode") for _ in range(getattr(opts, role))]
    return _place(counts_name(opts), [(role, tp, None, None) for role, tp in specs], opts)


def from_config(topology: TopologyConfig, opts: SimOptions) -> SimTopology:
    """The instances of a topology file, placed on GPUs as ``epd.run`` would place them."""
    specs = [
        (inst.role, inst.tp, inst.gpu, tuple(inst.modalities) if inst.modalities else None)
        for inst in topology.instances
    ]
    return _place(topology.name, specs, opts)


def _place(name: str, specs: list[tuple], opts: SimOptions) -> SimTopology:
    instances, rank = [], 0
    for index, (role, tp, pinned, modalities) in enumerate(specs):
        gpu = pinned if pinned is not None else rank % opts.num_gpus if opts.num_gpus else rank
        instances.append(
            SimInstance(
                index=index,
                role=role,
                leader=rank,
                tp=tp,
                modalities=modalities,
                gpu=gpu,
                node=gpu // opts.gpus_per_node,
            )
        )
        rank += tp
    return SimTopology(name=name, instances=tuple(instances))
