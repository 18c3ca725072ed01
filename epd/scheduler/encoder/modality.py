"""``modality``: each modality has its own encoder group (``modalities`` of the topology's
instances), so e.g. audio never queues behind video; inside a group the ``scheduler.within_group``
policy decides (``round_robin`` by default; ``least_loaded``, ``split``, ``cache_affinity``).

Every group's inner policy sees only its group's encoders and shares this policy's load ledger.
"""

from __future__ import annotations

from epd.scheduler import ENCODER_POLICIES
from epd.scheduler.base import EncoderPolicy, MediaItemInfo


@ENCODER_POLICIES.register("modality")
class ByModality(EncoderPolicy):
    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        inner = ENCODER_POLICIES.get(self.cfg.within_group)
        modalities = sorted({m for mods in self.encoders.values() for m in mods})
        self.groups: dict[str, EncoderPolicy] = {
            m: inner({r: (m,) for r in self.candidates(m)}, self.cfg, self.load) for m in modalities
        }
        self.needs_content_hash = inner.needs_content_hash

    def choose(self, items: list[MediaItemInfo]) -> list[int]:
        ranks = [-1] * len(items)
        for modality in dict.fromkeys(it.modality for it in items):
            if modality not in self.groups:
                raise ValueError(f"no encoder takes {modality}")
            idx = [i for i, it in enumerate(items) if it.modality == modality]
            for i, rank in zip(idx, self.groups[modality].choose([items[i] for i in idx]), strict=True):
                ranks[i] = rank
        return ranks
