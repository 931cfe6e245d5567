"""Selectors (Uniform, ProportionalToSize, ByProperty) and node properties (NodeView)."""

import sys
import textwrap
import tracemalloc

import numpy as np
import pytest

from conftest import initial_arrays, noise_app
from corolla import Rounds, ServerApp, run_simulation
from corolla.grid import NodeRange, NodeView, properties_of
from corolla.simulation.federation import Federation, properties_from_table
from corolla.simulation.runner import run_project
from corolla.strategies import FedAvg, StrategyError, Uniform
from corolla.strategies.base import RoundCtx
from corolla.strategies.selectors import ByProperty, ProportionalToSize, Selector
from corolla.strategies.strategy import Strategy


def ctx(round=1, seed=0, n=10):
    return RoundCtx(round=round, seed=seed, num_nodes=n)


def view(n, fn):
    return NodeRange(range(n), fn)


# -- NodeView ------------------------------------------------------------------------------------


def test_node_range_is_a_lazy_node_view():
    v = view(5, lambda i: {"x": i * 2})
    assert isinstance(v, NodeView) and len(v) == 5 and list(v) == [0, 1, 2, 3, 4]
    assert v[-1] == 4 and 3 in v and 7 not in v and v == range(5)
    assert v.properties(3) == {"x": 6}
    sub = v[1:4]
    assert isinstance(sub, NodeRange) and list(sub) == [1, 2, 3] and sub.properties(2) == {"x": 4}
    with pytest.raises(KeyError, match="node 7 is not in this federation"):
        v.properties(7)
    assert properties_of(v, 2) == {"x": 4}
    assert properties_of(range(3), 1) == {} and properties_of([0, 1], 0) == {}
    assert not isinstance(range(3), NodeView)


def test_federation_node_ids_give_node_config_as_properties():
    f = Federation(4, node_config={"tier": "edge", "gpu": False}, node_properties=lambda i: {"gpu": i % 2 == 0})
    ids = f.node_ids()
    assert isinstance(ids, NodeRange) and ids == range(4)
    assert ids.properties(2) == {"tier": "edge", "gpu": True, "partition-id": 2, "num-partitions": 4}
    assert f.context(1, 1, {}).node_config["gpu"] is False  # the node sees its own properties
    plain = Federation(3)
    assert plain.node_ids().properties(1) == {"partition-id": 1, "num-partitions": 3}


def test_properties_table_cycles_lists():
    fn = properties_from_table({"gpu": [True, False, False], "tier": "edge"})
    assert [fn(i)["gpu"] for i in range(6)] == [True, False, False] * 2 and fn(4)["tier"] == "edge"
    assert Federation(3, node_properties={"gpu": [True, False]}).node_ids().properties(2)["gpu"] is True
    with pytest.raises(ValueError, match="empty list"):
        properties_from_table({"gpu": []})
    with pytest.raises(TypeError, match="node_properties must be"):
        Federation(3, node_properties=5)


def test_million_node_view_is_not_materialised():
    tracemalloc.start()
    try:
        f = Federation(1_000_000, node_properties=lambda i: {"gpu": i % 1000 == 0})
        ids = f.node_ids()
        picked, _ = Uniform(fraction=1e-5, min_nodes=2).select({}, ids, ctx(n=len(ids)))
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert len(ids) == 1_000_000 and sys.getsizeof(ids) < 200
    assert ids.properties(999_000) == {"gpu": True, "partition-id": 999_000, "num-partitions": 1_000_000}
    assert len(picked) == 10 and all(0 <= i < 1_000_000 for i in picked)
    assert peak < 2_000_000  # Uniform on a NodeRange: no list of a million ids (that would be ~36 MB)


def test_million_node_by_property():
    f = Federation(1_000_000, node_properties=lambda i: {"gpu": i % 1000 == 0})
    ids = f.node_ids()
    picked, _ = ByProperty({"gpu": True}, then=Uniform(0.01, 2)).select({}, ids, ctx(n=len(ids)))
    assert len(picked) == 10 and all(i % 1000 == 0 for i in picked)


# -- ProportionalToSize --------------------------------------------------------------------------


def sized(sizes):
    return view(len(sizes), lambda i: {"num-examples": sizes[i]})


def test_selectors_follow_the_protocol():
    for s in (Uniform(), ProportionalToSize(), ByProperty({"gpu": True})):
        assert isinstance(s, Selector)
    assert Uniform().sampling == "fixed-size" and ProportionalToSize().sampling == "weighted"
    assert ByProperty({"gpu": True}).sampling == "fixed-size"


def test_proportional_is_seeded_and_deterministic():
    nodes = sized([5, 1, 8, 3, 0, 2, 9, 4, 6, 7])
    s = ProportionalToSize(fraction=0.3, min_nodes=2)
    a, st = s.select(s.init(), nodes, ctx(round=3, seed=7))
    b, _ = s.select(s.init(), nodes, ctx(round=3, seed=7))
    assert a == b and len(a) == 3 and a == sorted(a) and st == {}
    others = {tuple(s.select({}, nodes, ctx(round=r, seed=7))[0]) for r in range(1, 20)}
    assert len(others) > 3  # rounds draw differently
    seeds = [[s.select({}, nodes, ctx(round=r, seed=seed))[0] for r in range(1, 6)] for seed in (7, 8)]
    assert seeds[0] != seeds[1]  # the run seed matters


def test_proportional_frequencies_follow_sizes():
    sizes = list(range(1, 11))
    nodes = sized(sizes)
    one = ProportionalToSize(fraction=0.0, min_nodes=1)
    counts = np.zeros(10)
    rounds = 4000
    for r in range(rounds):
        (i,), _ = one.select({}, nodes, ctx(round=r))
        counts[i] += 1
    expected = np.array(sizes) / sum(sizes) * rounds
    # one draw per round: exactly proportional, so within a few standard deviations
    assert np.all(np.abs(counts - expected) < 4 * np.sqrt(expected) + 5)
    three = ProportionalToSize(fraction=0.3, min_nodes=1)
    counts3 = np.zeros(10)
    for r in range(1000):
        for i in three.select({}, nodes, ctx(round=r))[0]:
            counts3[i] += 1
    assert counts3.sum() == 3000 and np.corrcoef(counts3, sizes)[0, 1] > 0.95
    assert counts3[9] > counts3[4] > counts3[0]


def test_proportional_never_draws_size_zero_and_checks_properties():
    nodes = sized([0, 3, 0, 5, 2])
    s = ProportionalToSize(fraction=0.0, min_nodes=2)
    for r in range(50):
        picked, _ = s.select({}, nodes, ctx(round=r))
        assert 0 not in picked and 2 not in picked
    with pytest.raises(StrategyError, match="only 3 have num-examples > 0"):
        ProportionalToSize(fraction=0.0, min_nodes=4).select({}, nodes, ctx())
    assert ProportionalToSize(fraction=1.0).select({}, nodes, ctx())[0] == [0, 1, 2, 3, 4]
    with pytest.raises(StrategyError, match="node 0 has no property 'num-examples'.*node_properties"):
        ProportionalToSize(fraction=0.5).select({}, range(4), ctx())
    with pytest.raises(StrategyError, match="sizes must be finite numbers >= 0"):
        ProportionalToSize(fraction=0.5).select({}, sized([1, -2, 3]), ctx())
    with pytest.raises(StrategyError, match="node 1 has no property 'n'"):
        ProportionalToSize(fraction=0.5, key="n").select({}, view(3, lambda i: {"n": 1} if i != 1 else {}), ctx())
    custom = ProportionalToSize(fraction=0.0, min_nodes=1, key="samples")
    assert custom.select({}, view(3, lambda i: {"samples": [0, 0, 4][i]}), ctx())[0] == [2]
    with pytest.raises(StrategyError, match="fraction must be in"):
        ProportionalToSize(fraction=2.0)
    with pytest.raises(StrategyError, match="lower min_nodes to <= 3"):
        ProportionalToSize(min_nodes=5).check(3)


# -- ByProperty ----------------------------------------------------------------------------------


def test_by_property_picks_only_matching_nodes():
    nodes = view(20, lambda i: {"gpu": i % 4 == 0, "ram": i})
    s = ByProperty({"gpu": True}, then=Uniform(fraction=0.5, min_nodes=2))
    assert s.init() == {"then": {}} and s.min_cohort == 2
    seen = set()
    for r in range(1, 30):
        picked, st = s.select(s.init(), nodes, ctx(round=r, n=20))
        assert len(picked) == 3 and all(i % 4 == 0 for i in picked) and st == {"then": {}}
        seen.update(picked)
    assert seen == {0, 4, 8, 12, 16}
    assert s.select({}, nodes, ctx(round=5))[0] == s.select({}, nodes, ctx(round=5))[0]  # seeded
    big = ByProperty(lambda p: p["ram"] >= 15, then=Uniform(1.0, 1))
    assert big.select({}, nodes, ctx())[0] == [15, 16, 17, 18, 19]
    both = ByProperty({"gpu": True, "ram": 8}, then=Uniform(1.0, 1))
    assert both.select({}, nodes, ctx())[0] == [8]


def test_by_property_composes_with_proportional():
    nodes = view(10, lambda i: {"gpu": i >= 5, "num-examples": 100 if i == 9 else 1})
    s = ByProperty({"gpu": True}, then=ProportionalToSize(fraction=0.0, min_nodes=1))
    counts = np.bincount([s.select({}, nodes, ctx(round=r))[0][0] for r in range(300)], minlength=10)
    assert counts[:5].sum() == 0 and counts[9] > 250


def test_by_property_errors_clearly_when_too_few_match():
    nodes = view(10, lambda i: {"gpu": i == 3})
    s = ByProperty({"gpu": True}, then=Uniform(fraction=0.5, min_nodes=2))
    with pytest.raises(
        StrategyError,
        match=r"ByProperty\(where=\{'gpu': True\}\) matched 1 of 10 nodes, but "
        r"Uniform needs at least 2 per round.*min_nodes to <= 1",
    ):
        s.select({}, nodes, ctx())
    with pytest.raises(StrategyError, match="this grid gives no node properties"):
        s.select({}, range(10), ctx())
    with pytest.raises(StrategyError, match="matches every node"):
        ByProperty({})
    with pytest.raises(StrategyError, match="or a predicate"):
        ByProperty(3)


# -- end to end ----------------------------------------------------------------------------------


def gpu_server(min_nodes=2):
    def fn(ctx):
        strategy = Strategy(
            select=ByProperty({"gpu": True}, then=Uniform(fraction=0.5, min_nodes=min_nodes)),
            select_evaluate=ByProperty({"gpu": True}, then=Uniform(1.0, 1, purpose="select-evaluate")),
        )
        return Rounds(strategy=strategy, initial_arrays=initial_arrays())

    return ServerApp(fn)


def test_run_simulation_samples_only_gpu_nodes():
    gpu = {i for i in range(12) if i % 3 == 0}
    h = run_simulation(
        gpu_server(),
        noise_app(),
        num_nodes=12,
        num_rounds=5,
        backend="inline",
        node_properties=lambda i: {"gpu": i in gpu},
    )
    assert h.status == "completed" and len(h.rounds) == 5
    sampled = set()
    for rec in h.rounds:
        assert len(rec.sampled) == 2 and set(rec.sampled) <= gpu and set(rec.replied) <= gpu
        assert set(rec.evaluate_sampled) == gpu
        sampled.update(rec.sampled)
    assert len(sampled) >= 3  # rounds differ


def test_run_simulation_with_property_table_and_too_few_matches():
    h = run_simulation(
        gpu_server(),
        noise_app(),
        num_nodes=6,
        num_rounds=2,
        backend="inline",
        node_properties={"gpu": [True, False]},
    )
    assert all(set(r.sampled) <= {0, 2, 4} for r in h.rounds)
    with pytest.raises(StrategyError, match="matched 2 of 6 nodes"):
        run_simulation(
            gpu_server(min_nodes=3),
            noise_app(),
            num_nodes=6,
            num_rounds=1,
            backend="inline",
            node_properties={"gpu": [True, False, False]},
        )


def test_project_node_properties_from_toml(tmp_path):
    (tmp_path / "selprops_app").mkdir()
    (tmp_path / "selprops_app" / "__init__.py").write_text("")
    (tmp_path / "selprops_app" / "apps.py").write_text(
        textwrap.dedent("""
        import numpy as np
        from corolla import Arrays, ClientApp, Rounds, ServerApp
        from corolla.strategies import Uniform
        from corolla.strategies.selectors import ByProperty
        from corolla.strategies.strategy import Strategy

        client = ClientApp()

        @client.train
        def train(msg, ctx):
            assert ctx.node_config["zone"] == "eu", ctx.node_config
            return msg.reply(arrays=msg.content.arrays, metrics={"num-examples": 1})

        def fn(ctx):
            s = Strategy(select=ByProperty({"gpu": True}, then=Uniform(1.0, 1)), select_evaluate=None)
            return Rounds(strategy=s, initial_arrays=Arrays({"w": np.zeros(2, np.float32)}))

        server = ServerApp(fn)
    """)
    )
    (tmp_path / "pyproject.toml").write_text(
        textwrap.dedent("""
        [project]
        name = "selprops"
        [tool.corolla]
        server-app = "selprops_app.apps:server"
        client-app = "selprops_app.apps:client"
        [tool.corolla.simulation]
        nodes = 5
        backend = "inline"
        [tool.corolla.simulation.node-properties]
        gpu = [false, true]
        zone = "eu"
    """)
    )
    h = run_project(tmp_path, num_rounds=2, store=tmp_path / "store")
    assert [r.sampled for r in h.rounds] == [[1, 3], [1, 3]]


def test_fedavg_still_works_with_plain_sequences():
    s = FedAvg(fraction_train=0.5, min_train_nodes=2)
    nodes, _, _ = s.configure_train(s.init(initial_arrays()), list(range(6)), ctx(n=6))
    assert len(nodes) == 3 and all(isinstance(i, int) for i in nodes)
