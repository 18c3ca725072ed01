"""Device choice per rank, and the checks that fail before any process starts."""

from __future__ import annotations

import torch

from epd.launch.topology import TopologyConfig

DEVICES = ("auto", "cpu", "cuda")


def check_devices(device: str, topology: TopologyConfig, transfer_backend: str = "nccl", nnodes: int = 1) -> None:
    """``ValueError`` if the run asks for GPUs this machine does not have, or for NCCL between
    ranks that would share a GPU (NCCL refuses two ranks on one device); ranks are split evenly over
    ``nnodes`` nodes, each with this machine's GPUs."""
    if device not in DEVICES:
        raise ValueError(f"device={device!r} is not one of {', '.join(DEVICES)}")
    count = torch.cuda.device_count() if device != "cpu" else 0
    if device == "cuda" and count == 0:
        raise ValueError("device=cuda but no CUDA GPU is visible; use device=cpu (or device=auto)")
    if count == 0:
        return
    for rank in range(topology.world_size):
        gpu = pinned_gpu(topology, rank)
        if gpu is not None and gpu >= count:
            raise ValueError(
                f"topology {topology.name!r}: rank {rank} wants GPU {gpu} but only {count} GPU(s) are visible"
            )
    per_node = max(1, topology.world_size // nnodes)
    gpus = [(rank // per_node, gpu_index(topology, rank, rank % per_node)) for rank in range(topology.world_size)]
    if transfer_backend == "nccl" and len(set(gpus)) < len(gpus):
        raise ValueError(
            f"topology {topology.name!r} puts {len(gpus)} ranks on {count} GPU(s), and NCCL cannot connect two "
            f"ranks on one GPU: use transfer=shm (CUDA IPC) or transfer=zmq"
        )


def rank_device(device: str, topology: TopologyConfig, rank: int, local_rank: int) -> torch.device:
    """The device rank ``rank`` runs on; GPUs are shared round-robin when there are fewer than ranks."""
    if device == "cpu" or (device == "auto" and not torch.cuda.is_available()):
        return torch.device("cpu")
    index = gpu_index(topology, rank, local_rank)
    torch.cuda.set_device(index)
    return torch.device("cuda", index)


def pinned_gpu(topology: TopologyConfig, rank: int) -> int | None:
    """The GPU the topology names for ``rank`` (its instance's ``gpu`` plus its place in the instance), or None."""
    inst = topology.instance_at(rank)
    if inst.gpu is None:
        return None
    return inst.gpu + topology.group_of(rank).index(rank)


def gpu_index(topology: TopologyConfig, rank: int, local_rank: int) -> int:
    """The GPU of rank ``rank``: the one its instance names, else its local rank modulo the GPUs here."""
    gpu = pinned_gpu(topology, rank)
    return gpu if gpu is not None else local_rank % torch.cuda.device_count()
