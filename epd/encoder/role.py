"""Encoder role: cache lookup, media decode on a thread pool, cross-request batched tower calls.

An item's path: ``add`` looks its content key up in the embedding cache (a hit is done at once:
no decode, no tower) and joins an identical item already in flight instead of repeating it;
otherwise its fetch and decode start on a decode thread. ``step`` moves decoded items to the
ready list, hands the next batch (``BatchRule``: token budget, item cap, max wait) to
``TowerEncoder.encode`` — which packs items per modality into one tower call — and returns every
item finished since the last step, with its stage timestamps and batch/cache facts.
"""

from __future__ import annotations

import hashlib
import json
from concurrent.futures import Executor, Future, ThreadPoolExecutor
from dataclasses import dataclass, field

import torch

from epd import clock
from epd.encoder.batcher import BatchRule, Ready
from epd.encoder.cache import EmbeddingCache, shared_copy
from epd.encoder.config import EncoderConfig
from epd.encoder.decode import MediaDecoder
from epd.expiring import ExpiringSet
from epd.media import MediaConfig, MediaError
from epd.models import EncodedItem, MediaInput, TowerEncoder
from epd.protocol import EncodeItem
from epd.scheduler.config import SchedulerConfig

ABORTED_TTL_S = 600.0
"""How long an aborted request's id is remembered, so items still arriving for it are dropped."""
MAX_IDLE_POLL_S = 0.001
"""While decodes run, the rank's inbox wait is capped at this, so finished decodes are picked up soon."""


@dataclass
class EncodeResult:
    """One item's outcome: embeddings or an error, its stage timestamps, and how it was served."""

    msg: EncodeItem
    item: EncodedItem | None = None
    error: str | None = None
    timestamps: dict[str, float] = field(default_factory=dict)
    cache: str = "off"
    """``off`` (no key), ``miss``, ``device`` / ``host`` (cache tier hit) or ``inflight`` (joined an
    identical item being encoded)."""
    num_tokens: int = 0
    """Tokens the tower produced for it (0 if it failed)."""
    est_tokens: int = 0
    """Tokens the batch budget counted it as (estimated after decode)."""
    batch_id: int = -1
    """Which tower call of this encoder encoded it (-1: none, a hit or a failure before the tower)."""
    batch_size: int = 0
    batch_tokens: int = 0


@dataclass
class _Decoding:
    result: EncodeResult
    key: str | None
    future: Future
    input: MediaInput | None = None


class EncoderRole:
    """Queues ``EncodeItem`` messages and serves them from the cache or batched tower calls."""

    def __init__(
        self,
        encoder: TowerEncoder,
        media: MediaConfig,
        cfg: EncoderConfig | None = None,
        scheduler: SchedulerConfig | None = None,
        device: torch.device | None = None,
        pool: Executor | None = None,
    ) -> None:
        """``pool`` runs the decodes (default: ``encoder.decode_threads`` threads); the simulator passes its own."""
        self.encoder = encoder
        self.media = media
        self.cfg = cfg or EncoderConfig()
        encoder.set_preprocess_device(self.cfg.preprocess_device)  # before the decoder asks where it runs
        self.decoder = MediaDecoder(encoder, media, scheduler)
        self.rule = BatchRule(
            max_batch_tokens=self.cfg.max_batch_tokens,
            max_batch_items=self.cfg.max_batch_items,
            max_wait_s=self.cfg.max_wait_ms / 1e3,
        )
        self.cache = EmbeddingCache(
            self.cfg.cache_device_bytes, self.cfg.cache_host_bytes, device or torch.device("cpu")
        )
        self._params = _processing_params(media)
        self._pool = pool or ThreadPoolExecutor(self.cfg.decode_threads, thread_name_prefix="epd-decode")
        self._decoding: list[_Decoding] = []
        self._ready: list[Ready[_Decoding]] = []
        self._finished: list[EncodeResult] = []
        self._followers: dict[str, list[EncodeResult]] = {}
        self._num_batches = 0
        self.busy_s = 0.0  # seconds spent in tower calls
        self._aborted: ExpiringSet[str] = ExpiringSet(ABORTED_TTL_S)

    def stats(self) -> dict[str, float]:
        """Load figures for heartbeats (read from another thread: plain counters only)."""
        return {
            "encoder_decoding": float(len(self._decoding)),
            "encoder_ready": float(len(self._ready)),
            "encoder_busy_s": self.busy_s,
            "encoder_batches": float(self._num_batches),
        }

    def abort(self, request_id: str) -> None:
        """Forget every item of ``request_id`` not encoded yet: nothing more is done or sent for them."""
        self._aborted.add(request_id)
        self._ready = [r for r in self._ready if r.payload.result.msg.request_id != request_id]

    @property
    def has_work(self) -> bool:
        return bool(self._finished or self._decoding or self._ready)

    def wait_s(self) -> float | None:
        """How long the rank may block on its inbox before ``step`` has something to do (None: idle)."""
        if self._finished:
            return 0.0
        launch = self.rule.launch_at(self._ready)
        wait = None if launch is None else max(0.0, launch - clock.now())
        if self._decoding:
            wait = MAX_IDLE_POLL_S if wait is None else min(wait, MAX_IDLE_POLL_S)
        return wait

    def warm_up(self) -> None:
        """One small pass through the towers, so the first request does not pay for lazy init."""
        import numpy as np
        from PIL import Image

        from epd.media import AudioClip

        rate = self.encoder.audio_sampling_rate
        samples = {
            "image": Image.new("RGB", (64, 64)),
            "audio": AudioClip(samples=np.zeros(rate, dtype=np.float32), sampling_rate=rate, duration=1.0),
        }
        self.encoder.encode([MediaInput(modality=m, data=samples[m]) for m in self.encoder.modalities if m in samples])

    def add(self, msg: EncodeItem) -> None:
        if msg.request_id in self._aborted:
            return
        res = EncodeResult(msg=msg, timestamps={"encode_queue_start": clock.now()})
        key = self._key(msg)
        if key is not None:
            hit = self.cache.get(key)
            if hit is not None:
                res.item, res.cache = hit
                res.num_tokens = res.est_tokens = res.item.meta.num_embeds
                self._finished.append(res)
                return
            if key in self._followers:  # the same content is being encoded: share its result
                res.cache = "inflight"
                self._followers[key].append(res)
                return
            res.cache = "miss"
            self._followers[key] = []
        self._decoding.append(_Decoding(res, key, self._pool.submit(self._decode, msg)))

    def step(self) -> list[EncodeResult]:
        """Collect decoded items, run at most one tower call, return every item finished since last time."""
        self._collect_decoded()
        batch = self.rule.take(self._ready, clock.now())
        if batch:
            self._run([r.payload for r in batch])
        done, self._finished = self._finished, []
        return [res for res in done if res.msg.request_id not in self._aborted]

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)

    def _key(self, msg: EncodeItem) -> str | None:
        if msg.content_hash is None or not self.cache.enabled:
            return None
        return f"{msg.modality}:{msg.content_hash}:{self._params}"

    def _decode(self, msg: EncodeItem) -> tuple[MediaInput, int, dict[str, float]]:
        """On a decode thread: fetch and decode the item, then run the family's processor on it, so
        neither holds up the tower calls of the rank's loop."""
        start = clock.now()
        inp = self.decoder.decode(msg)
        fetched = clock.now()
        try:
            self.encoder.preprocess(inp)
        except Exception as exc:  # the processor refused this item: fail it alone
            raise MediaError(f"the {msg.modality} could not be processed: {type(exc).__name__}: {exc}") from exc
        stamps = {"fetch_start": start, "fetch_end": fetched, "preprocess_end": clock.now()}
        return inp, self.decoder.num_tokens(inp), stamps

    def _collect_decoded(self) -> None:
        still = []
        for dec in self._decoding:  # in arrival order, so the ready list stays FIFO
            if not dec.future.done():
                still.append(dec)
                continue
            try:
                inp, num_tokens, stamps = dec.future.result()
            except MediaError as exc:
                dec.result.error = str(exc)
                self._finish(dec, None)
                continue
            except Exception as exc:  # a decoder bug must fail this item, never the encoder rank
                modality = dec.result.msg.modality
                dec.result.error = f"the {modality} could not be loaded: {type(exc).__name__}: {exc}"
                self._finish(dec, None)
                continue
            dec.result.timestamps.update(stamps)
            dec.result.est_tokens = num_tokens
            dec.input = inp
            self._ready.append(Ready(payload=dec, num_tokens=num_tokens, ready_at=stamps["preprocess_end"]))
        self._decoding = still

    def _run(self, batch: list[_Decoding]) -> None:
        batch_id = self._num_batches
        self._num_batches += 1
        results = [dec.result for dec in batch]
        self._encode(results, [dec.input for dec in batch])
        tokens = sum(res.num_tokens for res in results)
        for dec, res in zip(batch, results, strict=True):
            res.batch_id, res.batch_size, res.batch_tokens = batch_id, len(batch), tokens
            self._finish(dec, res.item)

    def _finish(self, dec: _Decoding, item: EncodedItem | None) -> None:
        dec.input = None
        self._finished.append(dec.result)
        if dec.key is None:
            return
        if item is not None:
            self.cache.put(dec.key, item)
        now = clock.now()
        for follower in self._followers.pop(dec.key, []):
            follower.error = dec.result.error
            if item is not None:
                follower.item = shared_copy(item)
                follower.num_tokens = follower.est_tokens = item.meta.num_embeds
            follower.timestamps["encode_end"] = now
            self._finished.append(follower)

    def _encode(self, results: list[EncodeResult], inputs: list[MediaInput]) -> None:
        start = clock.now()
        try:
            encoded = self.encoder.encode(inputs)
        except Exception as exc:  # a bad item must not take the encoder or its batch-mates down
            if len(inputs) == 1:
                results[0].error = f"encoding failed: {type(exc).__name__}: {exc}"
                return
            for res, inp in zip(results, inputs, strict=True):
                self._encode([res], [inp])
            return
        end = clock.now()
        self.busy_s += end - start
        for res, item in zip(results, encoded, strict=True):
            res.item = item
            res.num_tokens = item.meta.num_embeds
            res.timestamps.update(encode_start=start, encode_end=end)


def _processing_params(media: MediaConfig) -> str:
    """Digest of the settings that change an item's embeddings for the same bytes (part of its cache key)."""
    keys = ("video_fps", "video_min_frames", "video_max_frames", "use_audio_in_video")
    text = json.dumps({k: getattr(media, k) for k in keys}, sort_keys=True)
    return hashlib.blake2b(text.encode(), digest_size=6).hexdigest()
