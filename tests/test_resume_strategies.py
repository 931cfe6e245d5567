"""Every strategy's state survives a checkpoint: 2 rounds + resume to 4 == 4 rounds straight.

SCAFFOLD, FedNova, FedDyn and Ditto (whose state also lives on the nodes) are covered with
their node helpers in test_stateful.py."""

import pytest

from conftest import initial_arrays, noise_app
from corolla import Rounds, ServerApp, run_simulation
from corolla.strategies import (
    Bulyan,
    FedAdagrad,
    FedAdam,
    FedAvgM,
    FedMedian,
    FedTrimmedAvg,
    FedYogi,
    MultiKrum,
    QFedAvg,
)

NODES = 11

STRATEGIES = {
    "FedAvgM": lambda: FedAvgM(server_learning_rate=0.7, server_momentum=0.9),
    "FedAdam": lambda: FedAdam(),
    "FedYogi": lambda: FedYogi(),
    "FedAdagrad": lambda: FedAdagrad(),
    "FedMedian": lambda: FedMedian(),
    "FedTrimmedAvg": lambda: FedTrimmedAvg(beta=0.2),
    "MultiKrum": lambda: MultiKrum(num_malicious_nodes=2, num_nodes_to_select=3),
    "Bulyan": lambda: Bulyan(num_malicious_nodes=2),
    "QFedAvg": lambda: QFedAvg(client_learning_rate=0.1, loss_key="loss"),
}


def _server(make):
    return ServerApp(lambda ctx: Rounds(strategy=make(), initial_arrays=initial_arrays()))


@pytest.mark.parametrize("name", sorted(STRATEGIES))
def test_resume_equals_uninterrupted(tmp_path, name):
    make = STRATEGIES[name]
    straight = run_simulation(_server(make), noise_app(), num_nodes=NODES, num_rounds=4, backend="inline", seed=3)
    first = run_simulation(
        _server(make), noise_app(), num_nodes=NODES, num_rounds=2, backend="inline", seed=3, store=tmp_path
    )
    resumed = run_simulation(
        _server(make), noise_app(), num_rounds=4, backend="inline", store=tmp_path, resume=first.run_id
    )
    assert [r.round for r in resumed.rounds] == [1, 2, 3, 4]
    assert resumed.arrays_sha256 == straight.arrays_sha256
    assert first.arrays_sha256 != straight.arrays_sha256  # the resumed run did real work

