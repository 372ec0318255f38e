"""Fine-tuning tasks on top of the pretrained bodies: data reading, training loops, metrics.

Submodules are imported explicitly (``plm_core.finetune.classification``) so that serving, which
only needs ``task_data`` and ``metrics``, does not pull in the training stack.
"""
