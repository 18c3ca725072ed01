"""Fetch and processor times as the encoder's decode threads see them.

Timed alone, a decode runs on a core of its own. In the encoder role, ``encoder.decode_threads``
decodes run at once, take turns at the GIL and the processor's lock, and share the cores with the
rank's loop (which polls them every millisecond and runs the tower). So items are given to epd's
own ``EncoderRole`` (real decode threads, real tower, cache off) ``decode_threads`` at a time, its
``step`` is called as a rank's loop calls it, and each item's stamps give its fetch time and its
processor time (from the later of its fetch's end and the previous item's processor end: the lock).
"""

from __future__ import annotations

import dataclasses
import itertools
import time

import torch

from epd.encoder import EncoderRole
from epd.encoder.config import EncoderConfig
from epd.media import MediaConfig
from epd.models import TowerEncoder
from epd.profile.timing import typical
from epd.protocol import EncodeItem
from epd.scheduler.config import SchedulerConfig

POLL_S = 0.001  # a rank's loop waits this long on its inbox while decodes run (epd.encoder.role.MAX_IDLE_POLL_S)
_IDS = itertools.count()


def in_pool_times(
    tower: TowerEncoder, media: MediaConfig, scheduler: SchedulerConfig, cfg: EncoderConfig, modality: str,
    source: str, repeats: int, device: torch.device,
) -> tuple[float, float]:  # fmt: skip
    """(typical fetch s, typical processor s) of ``source`` decoded ``decode_threads`` at a time."""
    cfg = dataclasses.replace(cfg, cache_device_bytes=0, cache_host_bytes=0)
    role = EncoderRole(tower, media, cfg, scheduler, device)
    fetch, prep = [], []
    try:
        for rep in range(repeats + 1):
            for _ in range(cfg.decode_threads):
                role.add(EncodeItem(request_id=f"pool-{next(_IDS)}", index=0, modality=modality, source=source,
                                    language_rank=0))  # fmt: skip
            done = []
            while len(done) < cfg.decode_threads:
                done += role.step()
                time.sleep(POLL_S)
            if rep == 0:
                continue  # warm
            stamps = sorted((r.timestamps for r in done), key=lambda t: t["preprocess_end"])
            previous = 0.0
            for ts in stamps:
                fetch.append(ts["fetch_end"] - ts["fetch_start"])
                prep.append(ts["preprocess_end"] - max(ts["fetch_end"], previous))
                previous = ts["preprocess_end"]
    finally:
        role.close()
    return typical(fetch), typical(prep)
