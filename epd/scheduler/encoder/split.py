"""``split``: one request's items are spread over every encoder that takes them, so a request with
many items finishes encoding sooner (intra-request parallelism, as in SGLang's EPD and the EPD paper).

Items are placed largest first, each on the encoder whose outstanding work plus what this request
already put there is smallest, so a busy encoder gets fewer of them.
"""

from __future__ import annotations

from epd.scheduler import ENCODER_POLICIES
from epd.scheduler.base import EncoderPolicy, MediaItemInfo


@ENCODER_POLICIES.register("split")
class Split(EncoderPolicy):
    def choose(self, items: list[MediaItemInfo]) -> list[int]:
        planned = dict(self.load.tokens)
        ranks = [-1] * len(items)
        for i in sorted(range(len(items)), key=lambda i: -items[i].est_tokens):
            group = self.candidates(items[i].modality)
            rank = min(group, key=lambda r: planned[r])  # ties: lowest rank
            planned[rank] += items[i].est_tokens
            ranks[i] = rank
        return ranks
