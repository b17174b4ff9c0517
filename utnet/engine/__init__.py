"""Training and evaluation engine: trainer, evaluator, metrics, checkpoints, signals, tracking."""
