"""The UDON trainer, one component a module: `distributed` (ranks, gradient all-reduce),
`optimizer` (AdamW groups, frozen backbone), `step` (the compiled UDON step), `state`
(atomic checkpoints, exact resume), `class_parallel` (`--class-parallel`: sharded classifiers, its step),
`sharded_checkpoint` (its per-rank shards and manifest), `report` (tables, results files, plots), `loop`
(the run: `loop.train(config)`).  Nothing is imported here, so `step`, `class_parallel` and `optimizer`
load without DALI."""
