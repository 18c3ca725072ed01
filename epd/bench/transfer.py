"""Transfer backends: the fixed cost of one item and the bandwidth of large ones, each against its floor
measured in the same run.

    python -m epd.bench.transfer transfer=shm,zmq sizes=1K,64K,1M,16M,154M iters=20 [device=auto|cpu|cuda]

Spawns two ranks on this host (rank 0 sends, rank 1 receives as a language rank does). Each round is
one image item ([embeddings, grid_thw]) timed end to end: from just before send() on rank 0 to the
tensors being usable on rank 1 (recv() returned, device synchronised), the handle travelling in a
sealed ItemReady over the real control plane (epd.protocol.channel, job secret), rank 1 turning its
loop (inbox, ready(), poll()) until the data is there. Rounds run one at a time; every byte is checked.

Floors, measured in the same run:
- control: the same sealed ItemReady with no data. The fixed cost of a transfer is the time of the
  smallest item (e.g. 1 KiB; target <= 0.15 ms), and "+ctl" its part above the control message.
- reference for bandwidth: across GPUs a plain NCCL send/recv of the bytes (with the same control
  message), on one GPU a device-to-device copy, for zmq and on CPU a same-process host memcpy
  (dst.copy_(src)). ratio = reference time / transfer time (1.0 = at the limit).
"""

from __future__ import annotations

import json
import os
import secrets
import socket
import sys
import tempfile

import torch
import torch.multiprocessing as mp

from epd.bench.transfer_ranks import Bench, devices
from epd.transfer import TransferConfig

DEFAULTS = {
    "transfer": "nccl",
    "sizes": "1K,64K,1M,16M,154M",
    "iters": "20",
    "warmup": "3",
    "device": "auto",
    "streams": "4",
    "stream_min": "",
    "json": "",
}
UNITS = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}

OPTIONS = {
    "transfer": "backends to measure, comma-separated: nccl (gloo on CPU), shm, zmq; shm:direct = shm without its device arena (one IPC open per transfer, as before pooling)",
    "sizes": "embedding bytes per item, comma-separated; K/M/G are binary units",
    "iters": "timed rounds per size (the median is reported)",
    "warmup": "untimed rounds per size before the timed ones",
    "device": "auto (a GPU when there is one), cpu or cuda",
    "streams": "transfer.zmq_streams: TCP connections a large zmq transfer is striped over",
    "stream_min": "transfer.zmq_stream_min_bytes (bytes; default: the config's)",
    "json": "also write the results to this file",
}


def usage() -> str:
    """The ``--help`` text: what the benchmark does and its key=value options with their defaults."""
    options = "\n".join(
        f"  {key}=VALUE{' ' * (10 - len(key))}{text} (default {DEFAULTS[key] or 'none'})"
        for key, text in OPTIONS.items()
    )
    return f"usage: python -m epd.bench.transfer [key=value ...]    (installed: epd-bench-transfer)\n{__doc__}\noptions:\n{options}\n"


def parse_args(argv: list[str]) -> dict[str, str]:
    """Hydra-style key=value arguments (`transfer.backend=shm` is accepted for `transfer=shm`)."""
    if {"-h", "--help"} & set(argv):
        print(usage())
        raise SystemExit(0)
    args = dict(DEFAULTS)
    for arg in argv:
        key, sep, value = arg.lstrip("+").partition("=")
        key = {"transfer.backend": "transfer"}.get(key, key)
        if not sep or key not in DEFAULTS:
            raise SystemExit(f"bad argument {arg!r}; expected key=value with key in {', '.join(DEFAULTS)} (see --help)")
        args[key] = value
    return args


def parse_size(text: str) -> int:
    """'64K' / '16M' / '1G' (binary units; an optional trailing 'iB' or 'B') or a byte count."""
    text = text.strip().upper().removesuffix("IB").removesuffix("B")
    scale = UNITS.get(text[-1:], 1)
    nbytes = int(float(text[:-1] if text[-1:] in UNITS else text) * scale)
    return max(8, nbytes - nbytes % 8)  # bfloat16 payload, and an int64 view for the check


def human(nbytes: int) -> str:
    for unit in ("GiB", "MiB", "KiB"):
        scale = UNITS[unit[0]]
        if nbytes >= scale:
            return f"{nbytes / scale:g} {unit}"
    return f"{nbytes} B"


def _rank_main(rank: int, args: dict[str, str], port: int, backends: list[str], out_path: str) -> None:
    bench = Bench(rank, args, port)
    sizes = [parse_size(s) for s in args["sizes"].split(",")]
    results = [bench.run(backend, sizes) for backend in backends]
    bench.close()
    if rank == 1:
        with open(out_path, "w") as f:
            json.dump(results, f)


def _where(devs: list[torch.device]) -> str:
    if devs[0].type == "cpu":
        return f"CPU, 2 processes on one host ({os.cpu_count()} cores)"
    return f"{torch.cuda.get_device_name(devs[0])}: rank 0 on {devs[0]}, rank 1 on {devs[1]}"


def print_tables(args: dict[str, str], devs: list[torch.device], results: list[dict]) -> None:
    """One table per backend, then the fixed cost and the large-item bandwidth of each."""
    print(f"command: python -m epd.bench.transfer {' '.join(f'{k}={v}' for k, v in args.items() if v)}")
    print(f"device:  {_where(devs)}; torch {torch.__version__}")
    print("time = median end-to-end of one item (send() -> usable on the receiver, sealed ItemReady over the")
    print("control plane); +ctl = time above the control message alone; ratio = reference / time")
    summary = []
    for res in results:
        control = res["control"]
        name = res["backend"] + (
            " (gloo: no NCCL on CPU)" if res["backend"] == "nccl" and devs[0].type == "cpu" else ""
        )
        print(f"\n{name}: control message alone {control * 1e3:.3f} ms")
        print(
            f"{'size':>10} {'ms':>9} {'+ctl ms':>8} {'GB/s':>8} {'ref ms':>9} {'ref GB/s':>9} {'ratio':>6}  reference"
        )
        for nbytes, t, ref_t, ref in res["rows"]:
            print(f"{human(nbytes):>10} {t * 1e3:9.3f} {(t - control) * 1e3:8.3f} {nbytes / t / 1e9:8.2f} "
                  f"{ref_t * 1e3:9.3f} {nbytes / ref_t / 1e9:9.2f} {ref_t / t:6.2f}  {ref}")  # fmt: skip
        (small, t_small, _, _), (large, t_large, ref_large, ref) = res["rows"][0], res["rows"][-1]
        summary.append(
            f"{res['backend']:>10}: fixed cost {t_small * 1e3:.3f} ms ({human(small)} item; control alone "
            f"{control * 1e3:.3f} ms) | {human(large)}: {large / t_large / 1e9:.2f} GB/s, {ref_large / t_large:.2f} of {ref}"
        )
    print("\nsummary (targets: fixed cost <= 0.15 ms; zmq >= 5 GB/s at 154 MB):")
    print("\n".join(summary))


def main(argv: list[str] | None = None) -> None:
    """Entry point of `python -m epd.bench.transfer`."""
    args = parse_args(sys.argv[1:] if argv is None else argv)
    backends = [b.strip() for b in args["transfer"].split(",") if b.strip()]
    for backend in backends:
        name, _, variant = backend.partition(":")
        TransferConfig(backend=name)  # unknown backend: ValueError before spawning
        if variant and (name, variant) != ("shm", "direct"):
            raise SystemExit(f"unknown variant {backend!r}; the one variant is shm:direct")
    devs = devices(args["device"])
    if devs[0].type == "cuda" and devs[0] == devs[1] and "nccl" in backends:
        print("epd.bench.transfer: skipping nccl: NCCL refuses two ranks on one GPU", file=sys.stderr)
        backends.remove("nccl")
        if not backends:
            raise SystemExit("nccl needs two GPUs (NCCL refuses two ranks on one GPU); try transfer=shm or zmq")
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    os.environ.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 2) // 2)))
    os.environ["EPD_BENCH_SECRET"] = secrets.token_hex(32)  # the ranks' job secret, as epd.run hands it out
    with tempfile.TemporaryDirectory() as tmp:
        out_path = os.path.join(tmp, "results.json")
        mp.spawn(_rank_main, args=(args, port, backends, out_path), nprocs=2, join=True)
        with open(out_path) as f:
            results = json.load(f)
    print_tables(args, devs, results)
    if args["json"]:
        with open(args["json"], "w") as f:
            json.dump(
                {"args": args, "device": _where(devs), "torch": torch.__version__, "results": results}, f, indent=1
            )


if __name__ == "__main__":
    main()
