import numpy as np
import pytest

from corolla import Arrays
from corolla.message import SERVER_ID, Message


def test_arrays_keep_order_and_share_memory():
    a = np.arange(6, dtype=np.float32)
    arr = Arrays({"z": a, "a": np.ones(2)})
    assert list(arr) == ["z", "a"]
    assert arr["z"] is a
    assert arr.num_params == 8 and arr.nbytes == 6 * 4 + 2 * 8


def test_arrays_reject_object_dtype():
    with pytest.raises(TypeError, match="cannot be sent"):
        Arrays({"x": np.array([object()])})


def test_sha256_is_canonical_and_sensitive():
    a = Arrays({"x": np.arange(3, dtype=np.float32), "y": np.ones(2)})
    b = Arrays({"y": np.ones(2), "x": np.arange(3, dtype=np.float32)})
    assert a.sha256() == b.sha256()
    c = Arrays({"x": np.arange(3, dtype=np.float64), "y": np.ones(2)})
    assert a.sha256() != c.sha256()
    d = a.copy()
    d["x"][0] = np.nextafter(np.float32(0), np.float32(1))
    assert a.sha256() != d.sha256()


def test_list_adapter_round_trip():
    arrs = [np.ones(2), np.zeros((2, 2))]
    a = Arrays.from_numpy(arrs)
    assert list(a) == ["0", "1"]
    assert all(x is y for x, y in zip(a.to_numpy(), arrs))
    with pytest.raises(ValueError):
        Arrays.from_numpy(arrs, ["only-one"])


def test_torch_adapter_zero_copy():
    torch = pytest.importorskip("torch")
    m = torch.nn.Linear(3, 2)
    a = Arrays.from_torch(m.state_dict())
    assert list(a) == ["weight", "bias"]
    a["weight"][0, 0] = 42.0  # shares memory with the module's parameter
    assert m.weight[0, 0].item() == 42.0
    sd = a.to_torch()
    m2 = torch.nn.Linear(3, 2)
    m2.load_state_dict(sd)
    assert torch.equal(m2.weight, m.weight)
    assert np.shares_memory(sd["bias"].numpy(), a["bias"])


def test_keras_like_adapter():
    class FakeKeras:
        def __init__(self):
            self.w = [np.ones((2, 2), np.float32), np.zeros(2, np.float32)]

        @property
        def weights(self):
            class V:
                def __init__(self, p):
                    self.path = p

            return [V("dense/kernel"), V("dense/bias")]

        def get_weights(self):
            return self.w

        def set_weights(self, ws):
            self.w = ws

    m = FakeKeras()
    a = Arrays.from_keras(m)
    assert list(a) == ["dense/kernel", "dense/bias"]
    a2 = Arrays({"dense/kernel": np.full((2, 2), 3, np.float32), "dense/bias": np.ones(2, np.float32)})
    a2.to_keras(m)
    assert m.w[0][0, 0] == 3


def test_message_reply_routes_back():
    m = Message.create("train", dst=7, config={"lr": 0.1}, run_id="r", round=3)
    r = m.reply(metrics={"x": 1.0})
    assert (r.metadata.src, r.metadata.dst, r.metadata.reply_to) == (7, SERVER_ID, m.metadata.message_id)
    assert r.metadata.round == 3 and r.ok
    e = m.error_reply("exception", "bad")
    assert not e.ok and "bad" in str(e.error)
