"""Drop-in layers for code written against other re-ID libraries: the originals' signatures over reidfast's ops.

    from reidfast.integrations import pml           # pytorch-metric-learning: BatchHardMiner, BatchHardTripletMarginLoss
    from reidfast.integrations import torchreid     # evaluate_rank, re_ranking, compute_distance_matrix, TripletLoss, patch()
    from reidfast.integrations import fastreid      # evaluate_rank, re_ranking, triplet_loss, patch()
    from reidfast.integrations import torchmetrics  # ReIDMetric (needs the torchmetrics package)

Each module imports its foreign package lazily (only pml's non-default distances/reducers, torchmetrics and
patch() need it installed), and nothing in reidfast's core imports these modules.
"""
__all__ = ["fastreid", "pml", "torchmetrics", "torchreid"]
