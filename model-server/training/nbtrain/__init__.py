"""nbtrain: the training pipeline of NeuraBalancer's learned routing strategy.

Request records (the proxy's JSONL request log or the ``training_requests`` view in
PostgreSQL) become feature rows (:mod:`nbtrain.features`, the contract of docs/ml.md), two
small tree ensembles learn latency and failure probability (:mod:`nbtrain.train`), and one
ONNX graph carries both to the model server (:mod:`nbtrain.export`). :mod:`nbtrain.loop`
closes the loop against a running deployment: export, train, compare with the active model
on the same held-out rows, install only a better one, and register every version.

Run ``python -m nbtrain --help`` from model-server/training with the venv's python.
"""

__version__ = "0.1.0"
