"""Shortest remaining prefill first."""

from __future__ import annotations

from epd.language.policies import ADMISSION_POLICIES, AdmissionPolicy
from epd.language.sequence import Sequence


@ADMISSION_POLICIES.register("shortest_first")
class ShortestPrefillFirst(AdmissionPolicy):
    """Fewest tokens left to prefill first: lowers mean TTFT under load, may starve long prompts."""

    def order(self, waiting: list[Sequence]) -> list[Sequence]:
        return sorted(waiting, key=lambda s: s.num_tokens - s.num_computed)
