"""The UDON trainer, one component a module: `distributed` (ranks, gradient all-reduce),
`optimizer` (AdamW groups, frozen backbone), `step` (the compiled UDON step), `state`
(atomic checkpoints, exact resume), `report` (tables, results files, plots), `loop` (the run:
`loop.train(config)`).  Nothing is imported here, so `step` and `optimizer` load without DALI."""
