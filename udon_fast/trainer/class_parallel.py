"""Class-parallel training (`--class-parallel`): every domain's classifiers sharded over the torchrun ranks.

Layout: rank r of W holds its slice of each domain's teacher and student classifiers
(`model.sharded_classifier.DomainClassifier`, rows `class_slice(C, r, W)`: ceil(C / W) per rank, the last
ranks fewer or none) and their AdamW moments; the backbone and the projections are replicated.  Each step
calls the domain classifier's `loss(...)` (`udon_loss(..., class_shard=...)`): CE_t, CE_s and KL are means
over the global batch (all ranks' rows), the same on every rank; SIM stays on the rank's rows.

Gradients: exactly those of the data-parallel trainer (equal per-rank batches b, W ranks).  Data parallel
descends (1/W) sum_r L_r, L_r = (w_t CE_t^r + w_s CE_s^r + w_kl KL^r + w_sim SIM^r) / S with per-rank means and
S = w_t + w_s + w_kl + w_sim (`LossOptions.total_weight`); the mean of per-rank means is the global mean, so
that objective is
    (w_t CE_t + w_s CE_s + w_kl KL) / S  +  (w_sim / S) (1/W) sum_r SIM^r      (CE, KL over the global batch).
Rank r backpropagates J_r = total_r - (1 - 1/W) (w_sim / S) SIM^r = (global terms) / S + (w_sim / S) (1/W) SIM^r:
- a classifier slice gets the complete gradient of the global terms (the fused loss sums over all global
  rows): the rows of the data-parallel gradient.  Never reduced (kept out of DDP).
- backbone and projections get the global terms' gradient through this rank's rows only (the embedding
  all-gather's backward reduce-scatters dE to the rows' owners) plus (w_sim / S)(1/W) dSIM^r: their SUM over
  ranks (DDP with a summing communication hook, `data_parallel.data_parallel`) is the data-parallel average.
The logged terms (each averaged over ranks by the loop) are the data-parallel ones.  Gradient clipping uses
the global norm (`UDONStep._clip_gradients`).  Checkpoints: `distributed_checkpoint`.
"""


def similarity_correction(loss, world_size: int) -> float:
    """(1 - 1/W) w_sim / S: how much of SIM^r a class-parallel rank takes out of its backward objective.

    loss: the step's `LossOptions` (its weights and `total_weight`)."""
    return (1.0 - 1.0 / world_size) * loss.similarity_weight / loss.total_weight
