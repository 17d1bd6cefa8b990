"""frugal's ServerApp: Flower's own strategies (FedAvg, FedAvgM, FedProx; optionally wrapped in
server-side differential privacy) train a frugal classifier whose initial weights come from a
frugal checkpoint; the final weights are written back as a frugal checkpoint that
`frugal eval / predict / serve` load, with the per-round metrics in history.json beside it."""

import json
import os

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, Context
from flwr.serverapp import Grid, ServerApp
from flwr.serverapp.strategy import (
    DifferentialPrivacyServerSideFixedClipping,
    FedAvg,
    FedAvgM,
    FedProx,
)

from frugal_flower.checkpoint import load_trained, save_with

app = ServerApp()


def _records(d):
    return {int(k): {m: float(v) for m, v in rec.items()} for k, rec in d.items()}


@app.main()
def main(grid: Grid, context: Context) -> None:
    c = context.run_config
    ckpt, out = str(c["checkpoint"]), str(c["out"])
    if not ckpt or not os.path.isfile(os.path.join(ckpt, "frugal.json")):
        raise ValueError(f"run config `checkpoint` = {ckpt!r}: not a frugal checkpoint folder")
    if not out:
        raise ValueError("run config `out`: where the final frugal checkpoint goes")
    initial = load_trained(ckpt)
    n = int(c["min-nodes"])
    common = dict(
        fraction_train=float(c["fraction-train"]),
        fraction_evaluate=float(c["fraction-evaluate"]),
        min_train_nodes=n,
        min_evaluate_nodes=n,
        min_available_nodes=n,
    )
    name = str(c["strategy"])
    if name == "fedavg":
        strategy = FedAvg(**common)
    elif name == "fedavgm":
        strategy = FedAvgM(
            **common,
            server_learning_rate=float(c["server-lr"]),
            server_momentum=float(c["server-momentum"]),
        )
    elif name == "fedprox":
        strategy = FedProx(**common, proximal_mu=float(c["proximal-mu"]))
    else:
        raise ValueError(f"run config `strategy` = {name!r}: fedavg, fedavgm or fedprox")
    if float(c["dp-noise"]) > 0:
        strategy = DifferentialPrivacyServerSideFixedClipping(
            strategy,
            noise_multiplier=float(c["dp-noise"]),
            clipping_norm=float(c["dp-clip"]),
            # Every connected node is sampled (fraction 1.0 by default): `fed up` passes how many.
            num_sampled_clients=int(c["dp-sampled-nodes"]) or n,
        )
    train_config = {}
    if float(c["lr"]) > 0:
        train_config["lr"] = float(c["lr"])
    if int(c["local-epochs"]) > 0:
        train_config["local-epochs"] = int(c["local-epochs"])
    if name == "fedprox":
        train_config["proximal-mu"] = float(c["proximal-mu"])
    result = strategy.start(
        grid=grid,
        initial_arrays=ArrayRecord({k: Array(v) for k, v in initial.items()}),
        num_rounds=int(c["num-server-rounds"]),
        train_config=ConfigRecord(train_config),
        timeout=600,
    )
    final = {k: np.asarray(v.numpy(), dtype=np.float32) for k, v in result.arrays.items()}
    rounds = int(c["num-server-rounds"])
    save_with(ckpt, out, final, extra={"epoch": rounds, "federated": {"engine": "flower", "strategy": name}})
    history = {
        "strategy": name,
        "rounds": rounds,
        "train": _records(result.train_metrics_clientapp),
        "evaluate": _records(result.evaluate_metrics_clientapp),
    }
    # Written whole, then renamed: its appearance tells `fed up` the run is done.
    tmp = os.path.join(out, "history.json.partial")
    with open(tmp, "w") as f:
        json.dump(history, f, indent=2)
    os.replace(tmp, os.path.join(out, "history.json"))
