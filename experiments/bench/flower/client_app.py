"""Flower ClientApp: one supernode per workload client (its partition-id is the client id)."""

from __future__ import annotations

import torch
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp
from task import PARAMS, Setup, get_model, load_data, train_client

app = ClientApp()


@app.query()
def query(msg: Message, context: Context) -> Message:
    """Reply with this node's client id, so the server can train exactly the scheduled ones.

    Also loads the data and model into this worker process (once; later calls hit the cache),
    so that round 1 does not pay for them, as in fedray, whose actors load them at start.
    """
    setup = Setup.from_env()
    load_data(setup.data)
    get_model(PARAMS[setup.workload][3])
    cid = int(context.node_config["partition-id"])
    return Message(RecordDict({"info": ConfigRecord({"cid": cid})}), reply_to=msg)


@app.train()
def train(msg: Message, context: Context) -> Message:
    """plain_loop.py's local training of this client from the received global state."""
    setup = Setup.from_env()
    torch.set_num_threads(setup.threads)
    cid = int(context.node_config["partition-id"])
    rnd = int(msg.content["config"]["server-round"])
    state = msg.content["arrays"].to_torch_state_dict()
    trained, n, loss_sum = train_client(setup.workload, load_data(setup.data), cid, rnd, state)
    metrics = MetricRecord({"num-examples": n, "loss-sum": loss_sum, "cid": cid})
    return Message(RecordDict({"arrays": ArrayRecord(trained), "metrics": metrics}), reply_to=msg)
