"""Which role each rank plays: the topology (`epd/conf/topology/*.yaml`)."""

from __future__ import annotations

from dataclasses import dataclass, field

ROLES = ("colocated", "encoder", "language")
MODALITIES = ("image", "video", "audio")


@dataclass(kw_only=True)
class InstanceConfig:
    """One engine instance; rank i of the job runs instance i."""

    role: str
    """``encoder`` (media → embeddings), ``language`` (prefill + decode) or ``colocated`` (all)."""
    gpu: int | None = None
    """CUDA device index on the node; ``None`` spreads ranks over the node's GPUs by local rank."""
    modalities: list[str] | None = None
    """Media an encoder instance takes (``image``, ``video``, ``audio``); ``None``: all the model has."""

    def __post_init__(self) -> None:
        if self.role not in ROLES:
            raise ValueError(f"unknown instance role {self.role!r}; known roles: {', '.join(ROLES)}")
        unknown = set(self.modalities or []) - set(MODALITIES)
        if unknown:
            raise ValueError(f"unknown modalities {sorted(unknown)} in the topology; known: {', '.join(MODALITIES)}")
        if self.modalities is not None and self.role == "language":
            raise ValueError("modalities apply to encoder (or colocated) instances, not language ones")


@dataclass(kw_only=True)
class TopologyConfig:
    """The instances of one experiment; ``+topology=<name>`` picks one, none means colocated."""

    name: str = "colocated"
    instances: list[InstanceConfig] = field(default_factory=lambda: [InstanceConfig(role="colocated")])

    def __post_init__(self) -> None:
        roles = [inst.role for inst in self.instances]
        if not roles:
            raise ValueError(f"topology {self.name!r} has no instances")
        if "colocated" in roles and len(roles) > 1:
            raise ValueError(f"topology {self.name!r}: a colocated instance must be the only instance")
        if "colocated" not in roles and ("encoder" not in roles or "language" not in roles):
            raise ValueError(
                f"topology {self.name!r} needs at least one encoder and one language instance "
                f"(or a single colocated one); it has {roles}"
            )

    @property
    def world_size(self) -> int:
        return len(self.instances)

    def ranks_with(self, role: str) -> list[int]:
        """Ranks whose instance does ``role`` (a colocated instance does every role)."""
        return [r for r, inst in enumerate(self.instances) if inst.role in (role, "colocated")]

    def encoder_modalities(self, served: tuple[str, ...]) -> dict[int, tuple[str, ...]]:
        """Encoder rank → the modalities it takes, given what the model ``served``."""
        return {
            r: tuple(m for m in served if self.instances[r].modalities is None or m in self.instances[r].modalities)
            for r in self.encoder_ranks
        }

    @property
    def encoder_ranks(self) -> list[int]:
        return self.ranks_with("encoder")

    @property
    def language_ranks(self) -> list[int]:
        return self.ranks_with("language")
