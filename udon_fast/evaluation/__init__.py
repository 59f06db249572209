"""Evaluation: `protocol` (the UnED kNN protocol over a model's embeddings of the evaluation splits),
`distributed` (its share of the work on each rank of a torchrun job) and `results` (results.json,
results.md and the per-domain tables)."""
