"""frugal's Flower app: federated training of frugal classifiers with Flower's strategies."""
