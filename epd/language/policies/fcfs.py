"""First come, first served (the default)."""

from __future__ import annotations

from epd.language.policies import ADMISSION_POLICIES, AdmissionPolicy
from epd.language.sequence import Sequence


@ADMISSION_POLICIES.register("fcfs")
class FirstComeFirstServed(AdmissionPolicy):
    """Arrival order; preempted sequences go back to the head of the line."""

    def order(self, waiting: list[Sequence]) -> list[Sequence]:
        return waiting
