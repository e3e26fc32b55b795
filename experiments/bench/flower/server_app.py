"""Flower ServerApp: FedAvg over exactly WORKLOAD.md's client schedule, centralized evaluation."""

from __future__ import annotations

import time
from collections.abc import Iterable

from flwr.app import (
    ArrayRecord,
    ConfigRecord,
    Context,
    Message,
    MessageType,
    MetricRecord,
    RecordDict,
)
from flwr.serverapp import Grid, ServerApp
from flwr.serverapp.strategy import FedAvg
from task import PARAMS, Setup, evaluate, get_model, load_data

app = ServerApp()
RESULT: dict = {}  # filled by main(), read by run_flower.py in the same process


class ScheduledFedAvg(FedAvg):
    """Flower's sample-weighted FedAvg, training the scheduled clients of each round.

    Replies are aggregated in ascending client id, the order WORKLOAD.md sums in (Flower's own
    aggregation, a float32 running sum, is order-sensitive in its last bits).
    """

    def __init__(self, schedule: list[list[int]], node_of: dict[int, int]) -> None:
        super().__init__(fraction_evaluate=0.0)
        self.schedule, self.node_of = schedule, node_of
        self.train_loss: dict[int, float] = {}

    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        """One train message to the node of every client scheduled for `server_round`."""
        config["server-round"] = server_round
        record = RecordDict({self.arrayrecord_key: arrays, self.configrecord_key: config})
        nodes = [self.node_of[c] for c in self.schedule[server_round - 1]]
        return self._construct_messages(record, nodes, MessageType.TRAIN)

    def aggregate_train(self, server_round: int, replies: Iterable[Message]):
        """FedAvg of the replies in ascending client id; records the round's training loss."""
        replies = list(replies)
        errors = [m.error.reason for m in replies if m.has_error()]
        if errors:
            raise RuntimeError(f"round {server_round}: {len(errors)} client(s) failed: {errors[0]}")
        replies.sort(key=lambda m: int(m.content["metrics"]["cid"]))
        got = [int(m.content["metrics"]["cid"]) for m in replies]
        if got != self.schedule[server_round - 1]:
            raise RuntimeError(f"round {server_round}: trained {got}, scheduled otherwise")
        n = sum(int(m.content["metrics"]["num-examples"]) for m in replies)
        self.train_loss[server_round] = (
            sum(float(m.content["metrics"]["loss-sum"]) for m in replies) / n
        )
        return super().aggregate_train(server_round, replies)


def map_nodes(grid: Grid, n_clients: int) -> dict[int, int]:
    """client id -> node id, asked once of every node (node ids are random in simulation)."""
    while len(nodes := list(grid.get_node_ids())) < n_clients:
        time.sleep(0.1)  # the Simulation Engine registers the supernodes after the ServerApp starts
    msgs = [Message(RecordDict(), dst_node_id=n, message_type=MessageType.QUERY) for n in nodes]
    replies = list(grid.send_and_receive(msgs))
    if len(replies) != len(nodes) or any(m.has_error() for m in replies):
        raise RuntimeError("node query failed: not every supernode answered")
    node_of = {int(m.content["info"]["cid"]): m.metadata.src_node_id for m in replies}
    if sorted(node_of) != list(range(n_clients)):
        raise RuntimeError(f"node query: client ids are not 0..{n_clients - 1}")
    return node_of


@app.main()
def main(grid: Grid, context: Context) -> None:
    """Map clients to nodes, then run the workload's rounds with centralized evaluation."""
    setup = Setup.from_env()
    data = load_data(setup.data)
    _, _, _, lora, eval_rounds = PARAMS[setup.workload]
    schedule = data["schedule"].tolist()[: setup.rounds or None]
    eval_rounds = {*eval_rounds, len(schedule)}  # and the last, as fedray does with mode.rounds
    t_map = time.perf_counter()
    strategy = ScheduledFedAvg(schedule, map_nodes(grid, len(data["offsets"]) - 1))
    RESULT["node_map_s"] = time.perf_counter() - t_map
    stamps: list[float] = []
    accuracy: dict[int, float] = {}

    def evaluate_fn(server_round: int, arrays: ArrayRecord) -> MetricRecord | None:
        """Accuracy after the workload's evaluated rounds; timestamps every round's end."""
        if server_round in eval_rounds:
            accuracy[server_round] = evaluate(setup.workload, data, arrays.to_torch_state_dict())
        stamps.append(time.perf_counter())  # round 0: the strategy loop starts
        return (
            MetricRecord({"accuracy": accuracy[server_round]}) if server_round in accuracy else None
        )

    strategy.start(
        grid=grid,
        initial_arrays=ArrayRecord(get_model(lora).get_state()),
        num_rounds=len(schedule),
        evaluate_fn=evaluate_fn,
    )
    RESULT["rounds"] = [
        {
            "round": r,
            "train_loss": strategy.train_loss[r],
            "round_s": stamps[r] - stamps[r - 1],
            **({"eval_accuracy": accuracy[r]} if r in accuracy else {}),
        }
        for r in range(1, len(schedule) + 1)
    ]
