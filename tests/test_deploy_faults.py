"""A coordinator under hostile and broken peers: garbage frames, lies about sizes, cut replies."""

from __future__ import annotations

import queue
import random
import threading

import grpc
import numpy as np
import psutil
import pytest

from corolla import Arrays, FedAvg, Rounds, ServerApp
from corolla.deploy import run_deployment
from corolla.transport.streams import DRIVER_METHOD, NODE_METHOD
from corolla.wire import codec, pb

pytestmark = pytest.mark.slow


def _stream(port: int, method: str, frames: list[bytes], timeout: float = 10.0) -> tuple[list[bytes], str]:
    """Send `frames` on a fresh stream, then read what comes back until the coordinator ends it."""
    with grpc.insecure_channel(f"127.0.0.1:{port}", options=[("grpc.max_receive_message_length", -1)]) as ch:
        call = ch.stream_stream(method)(iter(frames), timeout=timeout)
        got: list[bytes] = []
        try:
            for m in call:
                got.append(m)
            return got, "ok"
        except grpc.RpcError as e:
            return got, e.code().name


def _hello(role: str = "node", **kw) -> bytes:
    return codec.frame_bytes(hello=pb.Hello(**{"version": codec.WIRE_VERSION, "role": role, **kw}))


def _refusal(got: list[bytes]) -> pb.Refused | None:
    for m in got:
        try:
            f = pb.Frame.FromString(m)
        except Exception:  # noqa: BLE001
            continue
        if f.WhichOneof("body") == "refused":
            return f.refused
    return None


def _mutations(rng: random.Random, valid: list[bytes]) -> list[list[bytes]]:
    out = []
    for _ in range(40):
        frames = list(valid)
        op = rng.choice(["flip", "truncate", "drop", "dup", "garbage", "random"])
        i = rng.randrange(len(frames))
        if op == "flip" and frames[i]:
            b = bytearray(frames[i])
            for _ in range(rng.randint(1, 4)):
                b[rng.randrange(len(b))] ^= 1 << rng.randrange(8)
            frames[i] = bytes(b)
        elif op == "truncate":
            frames[i] = frames[i][: rng.randrange(len(frames[i]) + 1)]
        elif op == "drop":
            del frames[i]
        elif op == "dup":
            frames.insert(i, frames[i])
        elif op == "garbage":
            frames.insert(i, rng.randbytes(rng.randint(0, 64)))
        else:
            frames = [rng.randbytes(rng.randint(0, 256)) for _ in range(rng.randint(1, 5))]
        out.append(frames)
    return out


def test_garbage_and_lies_are_refused_and_the_coordinator_keeps_serving(procs):
    port = procs.serve("--insecure")
    rng = random.Random(1234)
    arrays = Arrays({"w": np.ones((4, 4), np.float32)})
    msg = codec.message_of(codec.header_of(_train_message(arrays)), arrays)
    valid_node = [_hello(has_node_id=True, node_id=77), *codec.encode(msg)]
    valid_driver = [_hello("driver"), *codec.encode(msg, dsts=[1], dst_message_ids=["m1"])]
    for frames in _mutations(rng, valid_node):
        _stream(port, NODE_METHOD, frames, timeout=5)
    for frames in _mutations(rng, valid_driver):
        _stream(port, DRIVER_METHOD, frames, timeout=5)

    # lies about sizes, checked before anything is allocated
    huge = pb.Header(kind="train", message_id="x", payload_bytes=10**13,
                     arrays=[pb.ArraySpec(name="w", dtype="<f4", shape=[10**13 // 4], nbytes=10**13)])
    got, _ = _stream(port, DRIVER_METHOD, [_hello("driver"), codec.frame_bytes(header=huge)])
    assert _refusal(got).code == "too-large"
    bad = pb.Header(kind="train", message_id="y", payload_bytes=8,
                    arrays=[pb.ArraySpec(name="w", dtype="|O", shape=[1], nbytes=8)])
    got, _ = _stream(port, DRIVER_METHOD, [_hello("driver"), codec.frame_bytes(header=bad)])
    assert _refusal(got).code == "bad-dtype"
    got, _ = _stream(port, NODE_METHOD, [_hello(), rng.randbytes(100)])
    assert _refusal(got).code in ("bad-frame", "unexpected")
    got, _ = _stream(port, NODE_METHOD, [_hello(version=99)])
    assert _refusal(got).code == "version" and "wire version" in _refusal(got).reason
    # an oversized message never reaches corolla: grpc refuses it at the message-size limit
    _, code = _stream(port, NODE_METHOD, [_hello(), bytes(codec.Limits().max_chunk + (1 << 20))])
    assert code == "RESOURCE_EXHAUSTED"

    coordinator = psutil.Process(procs.procs[0].pid)
    assert coordinator.is_running() and coordinator.memory_info().rss < 400 << 20
    # still serving: a real run with real nodes
    for i in range(2):
        procs.node(port, i, "--insecure", n=2)
    procs.wait_nodes(port, 2, "--insecure")
    h = run_deployment(_app(), f"127.0.0.1:{port}", num_rounds=2, min_nodes=2)
    assert [len(r.replied) for r in h.rounds] == [2, 2]
    assert "broke the protocol" in procs.text("serve")


def _train_message(arrays: Arrays):
    from corolla.message import Message

    return Message.create("train", 1, arrays=arrays, config={"round": 1}, run_id="r", round=1)


def _app() -> ServerApp:
    return ServerApp(
        lambda ctx: Rounds(
            strategy=FedAvg(fraction_train=1.0, fraction_evaluate=0.0, min_train_nodes=1, min_evaluate_nodes=0),
            initial_arrays=Arrays({"w": np.zeros((64, 64), np.float32)}),
            round_timeout=30,
        )
    )


class _CuttingNode:
    """A node that answers a train message with half a payload, then drops its connection."""

    def __init__(self, port: int, node_id: int):
        self.port, self.node_id = port, node_id
        self.out: queue.Queue = queue.Queue()
        self.cut = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _frames(self):
        yield _hello(has_node_id=True, node_id=self.node_id)
        while True:
            item = self.out.get()
            if item is None:
                return
            yield item

    def _run(self) -> None:
        ch = grpc.insecure_channel(f"127.0.0.1:{self.port}")
        call = ch.stream_stream(NODE_METHOD)(self._frames())
        reader = codec.FrameReader()
        try:
            for raw in call:
                kind, f = reader.feed(raw)
                if kind == "header":
                    h = f.header
                elif kind == "end":
                    reply = pb.Header(kind=h.kind, message_id="cut-1", reply_to=h.message_id, run_id=h.run_id,
                                      round=h.round, payload_bytes=h.payload_bytes,
                                      arrays=list(h.arrays), metrics=[pb.Metric(key="num-examples", value=1)])
                    self.out.put(codec.frame_bytes(header=reply))
                    self.out.put(bytes(h.payload_bytes // 2))  # half the payload ...
                    self.cut.wait(5)
                    call.cancel()  # ... and gone
                    return
        except grpc.RpcError:
            pass
        finally:
            self.out.put(None)
            ch.close()


def test_a_reply_cut_mid_payload_is_a_node_lost_failure_and_the_round_completes(procs):
    port = procs.serve("--insecure", "--heartbeat", "0.5")
    procs.node(port, 0, "--insecure", n=2)
    procs.wait_nodes(port, 1, "--insecure")
    cutter = _CuttingNode(port, node_id=5)
    procs.wait_nodes(port, 2, "--insecure")
    timer = threading.Timer(1.0, cutter.cut.set)
    timer.start()
    try:
        h = run_deployment(_app(), f"127.0.0.1:{port}", num_rounds=1, min_nodes=2)
    finally:
        timer.cancel()
    [rec] = h.rounds
    assert rec.replied == [0]
    [failure] = rec.failures
    assert failure.node == 5 and "node-lost" in failure.error
    assert not np.allclose(h.arrays["w"], 0)  # node 0's update went through
