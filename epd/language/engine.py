"""A simple, correct continuous-batching engine: whole-prompt prefill, batched decode, per-seq KV.

One ``step`` admits ready requests under the token budget, runs one flat forward for the admitted
prefills and every running decode, samples one token per sequence and returns the outputs.
"""

from __future__ import annotations

import time
from typing import Any

import torch

from epd.language.config import EngineConfig
from epd.language.decoder import KVCache, TextDecoder
from epd.language.sequence import Sequence
from epd.models import AUDIO, IMAGE, VIDEO, ItemMeta, LanguageSide
from epd.protocol import NewRequest, RequestOutput
from epd_kernels import merge_embeddings


class LanguageEngine:
    def __init__(self, side: LanguageSide, cfg: EngineConfig, device: torch.device) -> None:
        self.side = side
        self.cfg = cfg
        self.device = device
        self.decoder = TextDecoder(side.text_model, side.lm_head)
        self.waiting: dict[str, Sequence] = {}  # waiting for embeddings or for admission, FIFO
        self.running: list[Sequence] = []
        self._early_items: dict[str, list[tuple]] = {}  # items that beat their NewRequest here
        self._failed: set[str] = set()  # requests failed by one item: their other items are dropped on arrival

    @property
    def has_work(self) -> bool:
        return bool(self.running) or any(seq.ready for seq in self.waiting.values())

    def warm_up(self, num_tokens: int = 16) -> None:
        """A throw-away prefill and decode step (first-call kernel selection, allocator warm-up)."""
        ids = torch.arange(num_tokens, device=self.device)
        cache = KVCache()
        positions = ids.expand(3, -1)
        self.decoder.forward(self.decoder.embed_table[ids], positions, [num_tokens], [cache])
        self.decoder.forward(self.decoder.embed_table[ids[:1]], positions[:, :1] + num_tokens, [1], [cache])

    def add_request(self, req: NewRequest) -> None:
        seq = Sequence(request=req)
        seq.stamp("language_arrival")
        if req.sampling.temperature > 0:
            seq.generator = torch.Generator(device=self.device)
            seq.generator.manual_seed(req.sampling.seed if req.sampling.seed is not None else time.time_ns())
        self.waiting[req.request_id] = seq
        for args in self._early_items.pop(req.request_id, []):
            self.add_item(*args)

    def add_item(
        self,
        request_id: str,
        index: int,
        meta: ItemMeta | None,
        tensors: dict[str, torch.Tensor] | None,
        error: str | None,
        timestamps: dict[str, float],
    ) -> None:
        """An encoder's result for one item; an error fails the whole request."""
        seq = self.waiting.get(request_id)
        if seq is None and request_id in self._failed:
            return
        if seq is None:
            self._early_items.setdefault(request_id, []).append((request_id, index, meta, tensors, error, timestamps))
            return
        seq.merge_item_timestamps(timestamps)
        if error is not None:
            seq.error = seq.error or f"media item {index}: {error}"
        elif meta is not None and tensors is not None:
            seq.items[index] = (meta, tensors)
        if seq.ready:
            seq.stamp("embeddings_ready")

    def step(self) -> list[RequestOutput]:
        outputs = self._fail_errored()
        prefills = self._admit()
        batch = prefills + self.running
        if not batch:
            return outputs
        embeds, positions, seq_lens, deepstack = self._inputs(prefills)
        for seq in prefills:
            seq.stamp("prefill_start")
        logits = self.decoder.forward(embeds, positions, seq_lens, [seq.cache for seq in batch], deepstack)
        tokens = self._sample(logits, batch)
        emitted = [self._emit(seq, token) for seq, token in zip(batch, tokens, strict=True)]
        self.running = [seq for seq, out in zip(batch, emitted, strict=True) if not out.finished]
        return outputs + emitted

    def _fail_errored(self) -> list[RequestOutput]:
        failed = [seq for seq in self.waiting.values() if seq.error is not None]
        for seq in failed:
            del self.waiting[seq.id]
            self._failed.add(seq.id)
        return [
            RequestOutput(
                request_id=seq.id, finished=True, finish_reason="error", error=seq.error, timestamps=seq.timestamps
            )
            for seq in failed
        ]

    def _admit(self) -> list[Sequence]:
        budget = self.cfg.max_batch_tokens - len(self.running)
        admitted = []
        for seq in list(self.waiting.values()):
            if not seq.ready or len(self.running) + len(admitted) >= self.cfg.max_num_seqs:
                continue
            self._prepare(seq)
            # a prompt over the whole budget still runs alone: this engine has no chunked prefill
            if seq.prompt_len > budget and (admitted or self.running):
                break
            admitted.append(seq)
            budget -= seq.prompt_len
            del self.waiting[seq.id]
        return admitted

    def _prepare(self, seq: Sequence) -> None:
        """Expand placeholders, merge embeddings and compute positions (once per request)."""
        if seq.prompt_embeds is not None:
            return
        items = [seq.items[i] for i in sorted(seq.items)]  # prompt order
        metas = [meta for meta, _ in items]
        ids, types = self.side.expand(seq.request.prompt_token_ids, metas)
        positions, seq.rope_delta = self.side.positions(ids, types, metas)
        table = self.decoder.embed_table
        # visual rows take the visual items' embeds and audio rows the audio ones, each in prompt order
        # (a video with its audio track contributes to both)
        visual_rows = torch.nonzero((types == IMAGE) | (types == VIDEO), as_tuple=True)[0]
        audio_rows = torch.nonzero(types == AUDIO, as_tuple=True)[0]
        visual = [t["embeds"] for m, t in items if m.modality != "audio"]
        audio = [
            t["embeds"] if m.modality == "audio" else t["audio_embeds"] for m, t in items if AUDIO in m.token_types
        ]
        mm = [e.to(self.device) for e in visual + audio]
        mm_rows = torch.cat([visual_rows, audio_rows]).to(self.device)
        mm_embeds = torch.cat(mm) if mm else table.new_empty(0, table.shape[1])
        seq.prompt_embeds = merge_embeddings(ids.to(self.device), table, mm_rows, mm_embeds)
        deep = [t["deepstack"].to(self.device) for _, t in items if "deepstack" in t]
        if deep:  # DeepStack features sit on the visual rows (image and video), in prompt order
            seq.deepstack = (visual_rows.to(self.device), torch.cat(deep, dim=1))
        seq.prompt_positions = positions.to(self.device)
        seq.prompt_len = ids.numel()
        seq.items.clear()  # the embeddings now live in prompt_embeds

    def _inputs(self, prefills: list[Sequence]) -> tuple[torch.Tensor, torch.Tensor, list[int], Any]:
        embeds, positions, seq_lens = [], [], []
        deep_rows, deep_feats, offset = [], [], 0
        for seq in prefills:
            embeds.append(seq.prompt_embeds)
            positions.append(seq.prompt_positions.float())
            seq_lens.append(seq.prompt_len)
            if seq.deepstack is not None:
                deep_rows.append(seq.deepstack[0] + offset)
                deep_feats.append(seq.deepstack[1])
            offset += seq.prompt_len
            seq.prompt_embeds = seq.prompt_positions = seq.deepstack = None  # held by the KV cache from now on
        if self.running:
            last = torch.tensor([seq.output_ids[-1] for seq in self.running], device=self.device)
            embeds.append(self.decoder.embed_table[last])
            # decode position = prompt length + tokens generated so far - 1 + rope delta, on all axes
            pos = [seq.prompt_len + len(seq.output_ids) - 1 + seq.rope_delta for seq in self.running]
            positions.append(torch.tensor(pos, dtype=torch.float32, device=self.device).expand(3, -1))
            seq_lens.extend([1] * len(self.running))
        deepstack = (torch.cat(deep_rows), _cat_layers(deep_feats)) if deep_rows else None
        return torch.cat(embeds), torch.cat(positions, dim=1), seq_lens, deepstack

    def _sample(self, logits: torch.Tensor, batch: list[Sequence]) -> list[int]:
        greedy = logits.argmax(-1).tolist()
        tokens = []
        for row, seq, tok in zip(logits, batch, greedy, strict=True):
            temp = seq.request.sampling.temperature
            if temp > 0:
                probs = torch.softmax(row.float() / temp, dim=-1)
                tok = int(torch.multinomial(probs, 1, generator=seq.generator).item())
            tokens.append(tok)
        return tokens

    def _emit(self, seq: Sequence, token: int) -> RequestOutput:
        first = not seq.output_ids
        seq.output_ids.append(token)
        sp = seq.request.sampling
        reason = None
        if not sp.ignore_eos and token in self.side.eos_token_ids:
            reason = "stop"
        elif len(seq.output_ids) >= sp.max_tokens:
            reason = "length"
        if first:
            seq.stamp("first_token")
        if reason:
            seq.stamp("finished")
        return RequestOutput(
            request_id=seq.id,
            token_ids=[token],
            finished=reason is not None,
            finish_reason=reason,
            num_prompt_tokens=seq.prompt_len,
            timestamps=seq.timestamps if (first or reason) else {},
        )


def _cat_layers(feats: list[torch.Tensor]) -> torch.Tensor:
    """[k_i, M_i, H] per sequence → [max k, sum M, H]; a sequence with fewer layers adds zeros above them."""
    depth = max(f.shape[0] for f in feats)
    padded = [
        f if f.shape[0] == depth else torch.cat([f, f.new_zeros(depth - f.shape[0], *f.shape[1:])]) for f in feats
    ]
    return torch.cat(padded, dim=1)
