"""Device choice per rank, and the checks that fail before any process starts."""

from __future__ import annotations

import torch

from epd.launch.topology import TopologyConfig

DEVICES = ("auto", "cpu", "cuda")


def check_devices(device: str, topology: TopologyConfig) -> None:
    """``ValueError`` if the run asks for GPUs this machine does not have."""
    if device not in DEVICES:
        raise ValueError(f"device={device!r} is not one of {', '.join(DEVICES)}")
    if device != "cuda":
        return
    count = torch.cuda.device_count()
    if count == 0:
        raise ValueError("device=cuda but no CUDA GPU is visible; use device=cpu (or device=auto)")
    for rank, inst in enumerate(topology.instances):
        if inst.gpu is not None and inst.gpu >= count:
            raise ValueError(
                f"topology {topology.name!r}: rank {rank} wants GPU {inst.gpu} but only {count} GPU(s) are visible"
            )


def rank_device(device: str, topology: TopologyConfig, rank: int, local_rank: int) -> torch.device:
    """The device rank ``rank`` runs on; GPUs are shared round-robin when there are fewer than ranks."""
    if device == "cpu" or (device == "auto" and not torch.cuda.is_available()):
        return torch.device("cpu")
    gpu = topology.instances[rank].gpu
    index = gpu if gpu is not None else local_rank % torch.cuda.device_count()
    torch.cuda.set_device(index)
    return torch.device("cuda", index)
