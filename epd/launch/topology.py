"""Which role each rank plays: the topology (`epd/conf/topology/*.yaml`).

Instances are listed in order; instance i takes the next ``tp`` ranks of the job (its *leader* is
the first of them). Control messages go to leaders; the other ranks of a tensor-parallel instance
follow their leader over a torch.distributed subgroup.
"""

from __future__ import annotations

from dataclasses import dataclass, field

ROLES = ("colocated", "encoder", "language", "prefill", "decode")
MODALITIES = ("image", "video", "audio")
LANGUAGE_ROLES = ("colocated", "language", "prefill")
"""Roles that take a request's prompt (and its media embeddings) from the frontend."""


@dataclass(kw_only=True)
class InstanceConfig:
    """One engine instance: ``tp`` consecutive ranks of the job."""

    role: str
    """``encoder`` (media → embeddings), ``language`` (prefill + decode), ``prefill`` (prefill, first
    token, then the KV cache goes to a ``decode`` instance), ``decode``, or ``colocated`` (all of them)."""
    gpu: int | None = None
    """CUDA device index on the node of the instance's first rank (its other ranks take the next
    ones); ``None`` spreads ranks over the node's GPUs by local rank."""
    modalities: list[str] | None = None
    """Media an encoder instance takes (``image``, ``video``, ``audio``); ``None``: all the model has."""
    tp: int = 1
    """Tensor-parallel degree: how many ranks the instance spans (language, prefill and decode roles)."""

    def __post_init__(self) -> None:
        if self.role not in ROLES:
            raise ValueError(f"unknown instance role {self.role!r}; known roles: {', '.join(ROLES)}")
        unknown = set(self.modalities or []) - set(MODALITIES)
        if unknown:
            raise ValueError(f"unknown modalities {sorted(unknown)} in the topology; known: {', '.join(MODALITIES)}")
        if self.modalities is not None and self.role not in ("encoder", "colocated"):
            raise ValueError(f"modalities apply to encoder (or colocated) instances, not {self.role} ones")
        if isinstance(self.tp, bool) or not isinstance(self.tp, int) or self.tp < 1:
            raise ValueError(f"tp={self.tp!r}: the tensor-parallel degree is an integer >= 1")
        if self.tp > 1 and self.role not in ("language", "prefill", "decode"):
            raise ValueError(
                f"tp={self.tp} on a {self.role} instance: tensor parallelism applies to language, prefill and "
                "decode instances (encoders scale by adding instances)"
            )


@dataclass(kw_only=True)
class TopologyConfig:
    """The instances of one experiment; ``+topology=<name>`` picks one, none means colocated."""

    name: str = "colocated"
    instances: list[InstanceConfig] = field(default_factory=lambda: [InstanceConfig(role="colocated")])

    def __post_init__(self) -> None:
        roles = [inst.role for inst in self.instances]
        if not roles:
            raise ValueError(f"topology {self.name!r} has no instances")
        if "colocated" in roles:
            if len(roles) > 1:
                raise ValueError(f"topology {self.name!r}: a colocated instance must be the only instance")
            return
        has = set(roles)
        if "encoder" not in has:
            raise ValueError(f"topology {self.name!r} needs at least one encoder instance; it has {roles}")
        split = {"prefill", "decode"} & has
        if split and split != {"prefill", "decode"}:
            raise ValueError(
                f"topology {self.name!r}: prefill instances need decode instances and the other way round; "
                f"it has {roles}"
            )
        if split and "language" in has:
            raise ValueError(
                f"topology {self.name!r} mixes language instances with a prefill/decode split; use one or the other"
            )
        if not split and "language" not in has:
            raise ValueError(
                f"topology {self.name!r} needs a language instance (or prefill and decode instances); it has {roles}"
            )
        tps = {inst.tp for inst in self.instances if inst.role in ("prefill", "decode")}
        if len(tps) > 1:
            raise ValueError(
                f"topology {self.name!r}: prefill and decode instances must share one tp (the KV transfer maps "
                f"shard to shard); got tp values {sorted(tps)}"
            )

    # ---- ranks ----------------------------------------------------------------------------------

    @property
    def world_size(self) -> int:
        return sum(inst.tp for inst in self.instances)

    @property
    def leaders(self) -> list[int]:
        """The first rank of each instance, in instance order."""
        out, rank = [], 0
        for inst in self.instances:
            out.append(rank)
            rank += inst.tp
        return out

    def instance_of(self, rank: int) -> int:
        """Index of the instance rank ``rank`` belongs to."""
        if not 0 <= rank < self.world_size:
            raise ValueError(f"rank {rank} is outside topology {self.name!r} ({self.world_size} ranks)")
        for i, leader in enumerate(self.leaders):
            if leader <= rank < leader + self.instances[i].tp:
                return i
        raise AssertionError("unreachable")

    def instance_at(self, rank: int) -> InstanceConfig:
        return self.instances[self.instance_of(rank)]

    def group_of(self, rank: int) -> list[int]:
        """Every rank of the instance ``rank`` belongs to (its leader first)."""
        i = self.instance_of(rank)
        leader = self.leaders[i]
        return list(range(leader, leader + self.instances[i].tp))

    def is_leader(self, rank: int) -> bool:
        return rank in self.leaders

    def ranks_with(self, role: str) -> list[int]:
        """Leader ranks of the instances that do ``role`` (a colocated instance does every role but the
        split ones: it is an encoder and a language instance)."""
        also = ("colocated",) if role in ("encoder", "language") else ()
        return [leader for leader, inst in zip(self.leaders, self.instances, strict=True) if inst.role in (role, *also)]

    def encoder_modalities(self, served: tuple[str, ...]) -> dict[int, tuple[str, ...]]:
        """Encoder leader rank → the modalities it takes, given what the model ``served``."""
        return {
            r: tuple(m for m in served if self.instance_at(r).modalities is None or m in self.instance_at(r).modalities)
            for r in self.encoder_ranks
        }

    @property
    def encoder_ranks(self) -> list[int]:
        return self.ranks_with("encoder")

    @property
    def language_ranks(self) -> list[int]:
        """Leaders of the instances the frontend sends prompts to: language (or colocated) instances, or
        the prefill instances of a prefill/decode split."""
        return self.ranks_with("language") or self.ranks_with("prefill")

    @property
    def prefill_ranks(self) -> list[int]:
        return self.ranks_with("prefill")

    @property
    def decode_ranks(self) -> list[int]:
        return self.ranks_with("decode")

    @property
    def disaggregated_pd(self) -> bool:
        """Whether prefill and decode run on separate instances."""
        return bool(self.decode_ranks)
