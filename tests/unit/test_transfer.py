"""Transfer data plane in one process: config, handle encoding, byte views, shm/zmq loopback."""

from __future__ import annotations

import glob
import uuid
import warnings

import msgspec
import pytest
import torch
import torch.distributed as dist

from epd.bench.transfer import parse_args, parse_size
from epd.transfer import (
    TensorSpec,
    TransferConfig,
    TransferHandle,
    as_bytes,
    build_transfer,
    dtype_from_name,
    from_bytes,
)
from epd.transfer.nccl_backend import PACK_LIMIT_BYTES, pack_layout
from epd.transfer.zmq_backend import resolve_host


def _dense_dtypes() -> list[torch.dtype]:
    dtypes = []
    for dtype in {d for d in vars(torch).values() if isinstance(d, torch.dtype)}:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # "ComplexHalf support is experimental", ...
            if not torch.empty(1, dtype=dtype).is_quantized:
                dtypes.append(dtype)
    return sorted(dtypes, key=str)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"backend": "pigeon"}, r"'pigeon' is not a transfer backend; known: nccl, shm, zmq"),
        ({"zmq_port_min": 9000, "zmq_port_max": 8000}, "zmq_port_min"),
        ({"zmq_port_max": 70000}, "65535"),
        ({"zmq_linger_ms": -5}, "zmq_linger_ms"),
        ({"zmq_host": ""}, "zmq_host"),
        ({"shm_prefix": "a/b"}, "shm_prefix"),
        ({"recv_timeout_s": 0}, "recv_timeout_s"),
    ],
)
def test_config_rejects_bad_values(kwargs: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        TransferConfig(**kwargs)


def test_handle_round_trips_through_msgpack_and_json() -> None:
    spec = TensorSpec(dtype="bfloat16", shape=[2691, 3584])
    handle = TransferHandle(backend="shm", src=1, dst=2, transfer_id=7, specs=[spec], payload=b"\x00\xff")
    for codec in (msgspec.msgpack, msgspec.json):
        assert codec.decode(codec.encode(handle), type=TransferHandle) == handle
    assert handle.nbytes == 2691 * 3584 * 2


@pytest.mark.parametrize("dtype", _dense_dtypes(), ids=str)
def test_bytes_view_round_trips_every_dtype(dtype: torch.dtype) -> None:
    raw = torch.randint(0, 256, (3 * 5 * dtype.itemsize,), dtype=torch.uint8)
    tensor = raw.view(dtype).view(3, 5)
    spec = TensorSpec.of(tensor.t())  # non-contiguous input
    data = as_bytes(tensor.t())
    assert data.dtype == torch.uint8 and data.numel() == spec.nbytes
    back = from_bytes(data, spec)
    assert back.dtype == dtype and list(back.shape) == [5, 3]
    expected = raw.view(3, 5, dtype.itemsize).transpose(0, 1).reshape(-1)  # the transpose, in bytes
    assert torch.equal(as_bytes(back), expected) and torch.equal(data, expected)


def test_as_bytes_rejects_quantized_and_sparse() -> None:
    with pytest.raises(ValueError, match="dense strided"):
        as_bytes(torch.eye(3).to_sparse())
    with pytest.raises(ValueError, match="dense strided"):
        as_bytes(torch.quantize_per_tensor(torch.ones(3), 0.1, 0, torch.qint8))


def test_pack_layout_keeps_small_tensors_aligned_and_large_ones_apart() -> None:
    specs = [
        TensorSpec("uint8", [3]),
        TensorSpec("float64", [5]),
        TensorSpec("bfloat16", [PACK_LIMIT_BYTES]),  # 2 MiB: own op
        TensorSpec("int32", [0]),  # empty: no op
        TensorSpec("complex128", [1]),
    ]
    offsets, packed_nbytes = pack_layout(specs)
    assert offsets[2] is None and offsets[3] is None
    assert packed_nbytes == 3 + 40 + 16
    for spec, off in zip(specs, offsets, strict=True):
        if off is not None:
            assert off % dtype_from_name(spec.dtype).itemsize == 0


def _cases() -> list[list[torch.Tensor]]:
    return [
        [torch.randn(4, 8).to(torch.bfloat16), torch.tensor([[1, 28, 28]]), torch.tensor(2.5)],
        [torch.empty(0, 3), torch.randint(0, 2, (5,)).bool(), torch.randn(6, 4)[:, ::2]],
        [],
        [torch.randn(3, dtype=torch.complex128), torch.arange(7, dtype=torch.int16)],
    ]


@pytest.mark.parametrize("backend", ["shm", "zmq"])
def test_loopback_in_any_order_with_discard(backend: str) -> None:
    prefix = f"epdunit{uuid.uuid4().hex[:8]}"
    cfg = TransferConfig(backend=backend, shm_prefix=prefix, recv_timeout_s=5)
    with build_transfer(cfg, 0, 1, torch.device("cpu"), dist.HashStore()) as transfer:
        sent = _cases()
        handles = [transfer.send(0, tensors) for tensors in sent]
        unused = transfer.send(0, [torch.ones(1000)])
        handles = [msgspec.msgpack.decode(msgspec.msgpack.encode(h), type=TransferHandle) for h in handles]
        assert [h.transfer_id for h in handles] == [0, 1, 2, 3] and unused.transfer_id == 4
        for i in (3, 0, 2, 1):  # shm and zmq accept any order
            received = transfer.recv(handles[i])
            assert [(t.dtype, t.shape) for t in received] == [(t.dtype, t.shape) for t in sent[i]]
            for got, want in zip(received, sent[i], strict=True):
                assert torch.equal(as_bytes(got), as_bytes(want))
        transfer.discard(transfer.send(0, [torch.ones(10)]))
        transfer.poll()
    assert not glob.glob(f"/dev/shm/{prefix}*"), "close() must unlink segments nobody consumed"


def test_zmq_recv_times_out_without_data() -> None:
    cfg = TransferConfig(backend="zmq", recv_timeout_s=0.2)
    with build_transfer(cfg, 0, 2, torch.device("cpu"), dist.HashStore()) as transfer:
        ghost = TransferHandle(backend="zmq", src=1, dst=0, transfer_id=0, specs=[TensorSpec("float32", [4])])
        with pytest.raises(TimeoutError, match="no data"):
            transfer.recv(ghost)
        with pytest.raises(ValueError, match="'shm' handle was passed to the 'zmq' backend"):
            transfer.recv(TransferHandle(backend="shm", src=1, dst=0, transfer_id=0, specs=[]))


def test_resolve_host() -> None:
    assert resolve_host("10.1.2.3", dist.HashStore()) == "10.1.2.3"
    assert resolve_host("auto", dist.HashStore()) == "127.0.0.1"
    store = dist.TCPStore("127.0.0.1", 0, 1, True)
    assert resolve_host("auto", dist.PrefixStore("x", store)) == "127.0.0.1"


def test_bench_arguments() -> None:
    assert parse_size("64K") == 65536 and parse_size("256MiB") == 256 << 20 and parse_size("1000") == 1000
    args = parse_args(["transfer=shm", "sizes=1M", "iters=3"])
    assert args["transfer"] == "shm" and args["iters"] == "3" and args["device"] == "auto"
    assert parse_args(["transfer.backend=zmq"])["transfer"] == "zmq"
    with pytest.raises(SystemExit, match="bad argument"):
        parse_args(["frobnicate=1"])
