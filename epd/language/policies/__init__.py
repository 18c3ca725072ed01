"""Admission policies of the language scheduler (``engine.policy``): the order in which waiting
sequences whose embeddings are here get admitted. One small file per policy."""

from __future__ import annotations

from epd.language.sequence import Sequence
from epd.registry import Registry


class AdmissionPolicy:
    """Orders the admissible waiting sequences; the scheduler admits them in that order while it can."""

    def order(self, waiting: list[Sequence]) -> list[Sequence]:
        raise NotImplementedError


ADMISSION_POLICIES: Registry[AdmissionPolicy] = Registry("admission policy", "epd.language.policies")

__all__ = ["ADMISSION_POLICIES", "AdmissionPolicy"]
