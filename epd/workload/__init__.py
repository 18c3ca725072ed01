"""Workloads: which requests a run sends, with what media, and when they arrive."""

from epd.workload.arrivals import ARRIVALS, arrival_times
from epd.workload.base import (
    RESOLUTIONS,
    WorkloadConfig,
    WorkloadRequest,
    build_workload,
    load_requests,
    parse_resolution,
    register_workload,
    save_requests,
)
from epd.workload.driver import ArrivalDriver

__all__ = [
    "ARRIVALS",
    "RESOLUTIONS",
    "ArrivalDriver",
    "WorkloadConfig",
    "WorkloadRequest",
    "arrival_times",
    "build_workload",
    "load_requests",
    "parse_resolution",
    "register_workload",
    "save_requests",
]
