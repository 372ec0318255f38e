"""Pretraining: optimizer and schedule, checkpoints, the per-worker loop and the Ray Train driver.

Import the submodules directly (``plm_core.train.distributed.pretrain``); this package module stays
empty so that using ``optim`` or ``checkpoint`` (as fine-tuning does) does not import Ray.
"""
