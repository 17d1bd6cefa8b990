"""The ClientApp component Flower's app layout asks for. frugal's nodes are Rust processes
(`frugal fed node`) that answer the Fleet API themselves, so this is never run; it says so."""

from flwr.clientapp import ClientApp

app = ClientApp()


@app.train()
def train(msg, context):  # pragma: no cover - never called by frugal nodes
    raise RuntimeError("frugal's federation runs `frugal fed node` processes, not this ClientApp")


@app.evaluate()
def evaluate(msg, context):  # pragma: no cover
    raise RuntimeError("frugal's federation runs `frugal fed node` processes, not this ClientApp")
