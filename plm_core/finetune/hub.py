"""Task data from the HF hub through ``datasets``: ``hf:<dataset id>[:<config>]:<split>``.

Classification, NER and QA accept such a reference wherever they take a file (e.g.
``hf:nyu-mll/glue:sst2:train``, ``hf:eriktks/conll2003:test``, ``hf:rajpurkar/squad:validation``).
Loading needs internet; offline, the error names the reference. A hub split has no bytes of its own
to hash here, so its cache digest is the reference itself: name a revision-pinned dataset (or a
local copy) when reruns must see hub changes.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

from plm_core.errors import InputError
from plm_core.stage import sha256_file

HUB_PREFIX = "hf:"


def is_hub_ref(path: str | Path) -> bool:
    return isinstance(path, str) and path.startswith(HUB_PREFIX)


def load_hub_split(ref: str) -> Any:
    """The ``datasets.Dataset`` of ``ref``; ``InputError`` naming ``ref`` when it cannot be loaded."""
    parts = ref[len(HUB_PREFIX) :].split(":")
    if len(parts) not in (2, 3) or not all(parts):
        raise InputError(ref, "expected hf:<dataset id>[:<config>]:<split>, e.g. hf:nyu-mll/glue:sst2:train")
    from datasets import load_dataset  # imported here: serving never reads hub datasets

    name, split = parts[0], parts[-1]
    config = parts[1] if len(parts) == 3 else None
    try:
        return load_dataset(name, config, split=split)
    except Exception as e:  # offline, unknown id or split: the user's reference is what is wrong
        raise InputError(ref, f"cannot load from the HF hub: {type(e).__name__}: {e}") from None


def data_digest(path: str | Path) -> str:
    """sha256 of a task data file, or of the reference string for a hub split."""
    if is_hub_ref(path):
        return hashlib.sha256(str(path).encode()).hexdigest()
    return sha256_file(path)
