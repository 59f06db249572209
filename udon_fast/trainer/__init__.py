"""The UDON trainer, one component a module: `data_parallel` (DDP; the ranks: `udon_fast.distributed`),
`optimizer` (AdamW groups, frozen backbone), `step` (the compiled UDON step), `class_parallel`
(`--class-parallel`: the gradient bookkeeping of sharded classifiers), `state` (single-process checkpoints,
exact resume), `distributed_checkpoint` (multi-rank checkpoints through torch.distributed.checkpoint,
resumable on another number of ranks), `report` (metrics.jsonl, plots; the results files:
`udon_fast.evaluation.results`), `loop` (the run: `loop.train(config)`).  Nothing is imported here, so
`step`, `class_parallel` and `optimizer` load without DALI."""
