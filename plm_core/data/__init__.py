"""Data stages: ingest -> clean -> pack, and the Parquet shard layout they share.

The tokenizer stage sits in ``plm_core.tokenizer`` because models and fine-tuning use it too.
"""
