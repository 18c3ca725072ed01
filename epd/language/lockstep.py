"""The leader of a tensor-parallel instance tells its followers what to run, step by step.

Only the leader has a scheduler; before each device step it broadcasts the step (an op, a few
integers, a few tensors) over the instance's group, and every follower runs the same step on its
shard, so the collectives inside (all-reduces, the logits' all-gather) pair up. A step's host-side
description goes over a gloo group in one packed int64 tensor; its tensors over the instance's group
(NCCL on GPU).
"""

from __future__ import annotations

import torch
import torch.distributed as dist

from epd.language.parallel import TensorParallel

FORWARD, REPLAY, CAPTURE, STOP = 1, 2, 3, 4
DTYPES = [torch.float32, torch.bfloat16, torch.float16, torch.int64, torch.int32, torch.uint8, torch.bool]
MAX_DIMS = 4


class Lockstep:
    def __init__(self, tp: TensorParallel, device: torch.device) -> None:
        self.tp = tp
        self.device = device

    def send(self, op: int, ints: list[int], tensors: list[torch.Tensor | None]) -> None:
        """Leader: broadcast one step's description (``tensors`` on this rank's device, or None)."""
        meta = [op, len(ints), len(tensors), *ints]
        for t in tensors:
            if t is None:
                meta += [0] * (3 + MAX_DIMS)
                continue
            shape = list(t.shape) + [0] * (MAX_DIMS - t.dim())
            meta += [1, DTYPES.index(t.dtype), t.dim(), *shape]
        packed = torch.tensor(meta, dtype=torch.int64)
        self._broadcast(torch.tensor([packed.numel()], dtype=torch.int64), self.tp.meta_group)
        self._broadcast(packed, self.tp.meta_group)
        for t in tensors:
            if t is not None:
                self._broadcast(t.contiguous(), self.tp.group)

    def recv(self) -> tuple[int, list[int], list[torch.Tensor | None]]:
        """Follower: the next step's (op, ints, tensors), the tensors on this rank's device."""
        size = torch.zeros(1, dtype=torch.int64)
        self._broadcast(size, self.tp.meta_group)
        packed = torch.zeros(int(size.item()), dtype=torch.int64)
        self._broadcast(packed, self.tp.meta_group)
        meta = packed.tolist()
        op, num_ints, num_tensors = meta[:3]
        ints = meta[3 : 3 + num_ints]
        pos = 3 + num_ints
        tensors: list[torch.Tensor | None] = []
        for _ in range(num_tensors):
            present, dtype, ndim, *shape = meta[pos : pos + 3 + MAX_DIMS]
            pos += 3 + MAX_DIMS
            if not present:
                tensors.append(None)
                continue
            t = torch.empty(shape[:ndim], dtype=DTYPES[dtype], device=self.device)
            self._broadcast(t, self.tp.group)
            tensors.append(t)
        return op, ints, tensors

    def _broadcast(self, t: torch.Tensor, group) -> None:
        dist.broadcast(t, src=self.tp.leader, group=group)


def tensor_parallel_for(topology, rank: int, device: torch.device) -> TensorParallel:
    """This rank's ``TensorParallel``. Every rank of the job must call this, in the same order: it makes
    one process group per tensor-parallel instance (torch.distributed requires all ranks to join)."""
    mine = TensorParallel()
    for leader, inst in zip(topology.leaders, topology.instances, strict=True):
        if inst.tp == 1:
            continue
        ranks = list(range(leader, leader + inst.tp))
        group = dist.new_group(ranks)
        meta = dist.new_group(ranks, backend="gloo") if device.type == "cuda" else group
        if rank in ranks:
            mine = TensorParallel(size=inst.tp, rank=ranks.index(rank), group=group, meta_group=meta, leader=leader)
    return mine
