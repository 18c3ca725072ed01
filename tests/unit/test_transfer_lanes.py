"""zmq lanes: stripes reassembled in place whatever their order and connection, impostors cut, buffers
reused (real TCP sockets on loopback, real threads)."""

from __future__ import annotations

import gc
import random
import socket
import time

import numpy as np
import pytest
import torch
import torch.distributed as dist

import epd.transfer.zmq_lanes as lanes
from epd.protocol.auth import unseal_value
from epd.transfer import TensorSpec, TransferConfig, TransferHandle, as_bytes, build_transfer
from epd.transfer.base import aligned_offsets
from epd.transfer.zmq_backend import LANES, LANES_KEY
from epd.transfer.zmq_lanes import pieces, split_stripes, stripe_header
from epd.transfer.zmq_lanes_rx import HostBuffers

SECRET = b"lane secret of sixteen or more bytes"


def _receiver(store: dist.Store, **cfg):
    cfg = TransferConfig(backend="zmq", recv_timeout_s=10, **cfg)
    return build_transfer(cfg, 0, 3, torch.device("cpu"), store, SECRET, "127.0.0.1")


def _connect(store: dist.Store) -> socket.socket:
    key = LANES_KEY.format(rank=0)
    host, port = unseal_value(SECRET, key, store.get(key).decode()).rsplit(" ", 1)
    return socket.create_connection((host, int(port)))


def _closed_by_peer(conn: socket.socket) -> bool:
    try:
        return conn.recv(1) == b""
    except ConnectionResetError:  # closed with our bytes unread
        return True


def _handle(src: int, transfer_id: int, specs: list[TensorSpec]) -> TransferHandle:
    return TransferHandle(backend="zmq", src=src, dst=0, transfer_id=transfer_id, specs=specs, payload=LANES)


def test_split_stripes_cover_the_bytes_once() -> None:
    for total, lanes_, smallest in [
        (1, 4, 8),
        (1000, 4, 1),
        (154 << 20, 4, 1 << 20),
        (3 << 20, 8, 1 << 20),
        (640, 3, 64),
    ]:
        stripes = split_stripes(total, lanes_, smallest)
        assert 1 <= len(stripes) <= lanes_
        assert stripes[0][0] == 0 and sum(n for _, n in stripes) == total
        assert all(a + n == b for (a, n), (b, _) in zip(stripes, stripes[1:], strict=False))
        assert all(off % 64 == 0 for off, _ in stripes)
        assert len(stripes) == 1 or min(n for _, n in stripes[:-1]) >= smallest


def test_pieces_fill_alignment_gaps_with_zeros() -> None:
    arrays = [np.arange(10, dtype=np.uint8), np.arange(100, 103, dtype=np.uint8)]
    offsets, total = aligned_offsets([10, 3])
    packed = np.concatenate(pieces(list(zip(offsets, arrays, strict=True)), 0, total))
    assert total == 67 and list(packed[:10]) == list(range(10)) and not packed[10:64].any()
    assert list(packed[64:]) == [100, 101, 102]
    assert np.concatenate(pieces(list(zip(offsets, arrays, strict=True)), 5, 66)).tolist() == packed[5:66].tolist()


def test_stripes_in_any_order_over_any_connection_are_reassembled() -> None:
    store = dist.HashStore()
    with _receiver(store) as transfer:
        rng = random.Random(1)
        specs = [TensorSpec("bfloat16", [3000, 7]), TensorSpec("int64", [1, 3])]
        offsets, total = aligned_offsets([s.nbytes for s in specs])
        payloads = {(src, tid): torch.randint(0, 256, (total,), dtype=torch.uint8) for src in (1, 2) for tid in (0, 5)}
        stripes = [(key, lo, n) for key in payloads for lo, n in split_stripes(total, 5, 1000)]
        rng.shuffle(stripes)  # interleaved transfers, stripes out of order, spread over three connections
        conns = [_connect(store) for _ in range(3)]
        for k, ((src, tid), lo, n) in enumerate(stripes):
            data = payloads[(src, tid)][lo : lo + n].numpy().tobytes()
            conns[k % 3].sendall(stripe_header(SECRET, src, tid, total, lo, n) + data)
        for src, tid in [(2, 5), (1, 0), (2, 0)]:
            got = transfer.recv(_handle(src, tid, specs))
            want = payloads[(src, tid)]
            for tensor, spec, off in zip(got, specs, offsets, strict=True):
                assert tensor.dtype == getattr(torch, spec.dtype) and list(tensor.shape) == spec.shape
                assert torch.equal(as_bytes(tensor), want[off : off + spec.nbytes])
        transfer.discard(_handle(1, 5, specs))
        assert transfer.dropped == 0
        for conn in conns:
            conn.close()


def test_impostors_are_cut_and_counted(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(lanes, "AUTH_TIMEOUT_S", 0.3)
    store = dist.HashStore()
    with _receiver(store, max_transfer_bytes=1 << 20) as transfer:
        forged = stripe_header(b"not the job secret at all, no", 1, 0, 100, 0, 100)
        too_big = stripe_header(SECRET, 1, 0, 2 << 20, 0, 100)
        outside = stripe_header(SECRET, 1, 0, 100, 64, 100)
        no_peer = stripe_header(SECRET, 7, 0, 100, 0, 100)
        for head in (forged, too_big, outside, no_peer, b"\x00" * 72):
            conn = _connect(store)
            conn.sendall(head + bytes(100))
            assert _closed_by_peer(conn), "the receiver closes the connection"
            conn.close()
        silent = _connect(store)
        assert _closed_by_peer(silent), "a connection that says nothing is closed after the auth timeout"
        silent.close()
        deadline = time.monotonic() + 5
        while transfer.dropped < 6 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert transfer.dropped == 6
        assert not transfer.ready(_handle(1, 0, [TensorSpec("uint8", [100])]))


def test_striped_loopback_with_discard_and_recv_into() -> None:
    cfg = TransferConfig(backend="zmq", recv_timeout_s=10, zmq_stream_min_bytes=4096, zmq_streams=3)
    with build_transfer(cfg, 0, 1, torch.device("cpu"), dist.HashStore(), SECRET) as transfer:
        sent = [torch.randn(513, 33).to(torch.bfloat16), torch.randn(9, 2)[:, 1], torch.tensor([[1, 4, 6]])]
        handles = [transfer.send(0, sent) for _ in range(4)]
        assert all(h.payload == LANES for h in handles)
        transfer.discard(handles[1])
        for handle in (handles[3], handles[0]):
            got = transfer.recv(handle)
            assert all(torch.equal(as_bytes(a), as_bytes(b)) for a, b in zip(got, sent, strict=True))
        out = [torch.empty_like(t.contiguous()) for t in sent]
        transfer.recv_into(handles[2], out)
        assert all(torch.equal(a, b) for a, b in zip(out, sent, strict=True))
        layers = [torch.randn(500 + i % 3) for i in range(3000)]  # a KV-like list: ~2000 pieces a stripe > IOV_MAX
        got = transfer.recv(transfer.send(0, layers))
        assert all(torch.equal(a, b) for a, b in zip(got, layers, strict=True))
        deadline = time.monotonic() + 5
        while transfer.num_inflight and time.monotonic() < deadline:
            transfer.poll()
        assert transfer.num_inflight == 0


def test_host_buffers_come_back_when_their_views_die() -> None:
    buffers = HostBuffers()
    first = buffers.get(100_000)
    pointer = first.data_ptr()
    view = first[10:20]
    del first
    gc.collect()
    assert buffers.get(100_000).data_ptr() != pointer, "a live view keeps its buffer"
    del view
    gc.collect()
    again = buffers.get(120_000)  # the same power-of-two class
    assert again.data_ptr() == pointer and again.numel() == 120_000
