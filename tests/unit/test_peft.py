"""LoRA and IA3 adapters through peft on our own models: what trains, and that merging is exact."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import torch

from plm_core.config import FinetuneConfig, model_preset
from plm_core.errors import ConfigError
from plm_core.finetune.peft import apply_peft, count_parameters, head_modules, merge
from plm_core.finetune.trainer import TrainerConfig, fit
from plm_core.models.factory import classification_model


@pytest.fixture(autouse=True)
def _one_thread() -> Iterator[None]:
    """Toy models gain nothing from threads, and on a shared machine two spinning intra-op
    threads per process make each step ~100x slower."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


FAMILIES = ("encoder", "decoder", "seq2seq")


def _model(family: str) -> torch.nn.Module:
    torch.manual_seed(0)
    return classification_model(model_preset("tiny", family, vocab_size=8000), 2)


def _batch(seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    input_ids = torch.randint(5, 8000, (4, 12), generator=g)
    attention_mask = torch.ones_like(input_ids)
    attention_mask[1, 8:] = 0
    return {"input_ids": input_ids, "attention_mask": attention_mask, "labels": torch.tensor([0, 1, 1, 0])}


@pytest.mark.parametrize("family", FAMILIES)
def test_lora_trains_under_5_percent_and_only_lora_and_head_move(family: str) -> None:
    model = apply_peft(_model(family), FinetuneConfig(method="lora", lora_r=4))
    counts = count_parameters(model)
    assert 0 < counts.fraction < 0.05
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and all("lora_" in n or "modules_to_save" in n for n in trainable)
    # Every attention and feed-forward Linear of the body carries LoRA, and so do the embeddings.
    adapted = {n.split(".lora_A")[0] for n in trainable if ".lora_A." in n}
    assert len(adapted) == 6 * 2  # query, key, value, out, up, down x 2 layers
    assert any("embeddings.word.lora_embedding_A" in n for n in trainable)
    without = apply_peft(_model(family), FinetuneConfig(method="lora", lora_r=4, lora_embeddings=False))
    assert not any("embedding" in n for n, p in without.named_parameters() if p.requires_grad)
    assert count_parameters(without).trainable < counts.trainable

    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    batch = _batch()
    fit(model, lambda epoch: [batch], 1, TrainerConfig(epochs=1, lr=1e-2, warmup_ratio=0.0))
    changed = {n for n, p in model.named_parameters() if not torch.equal(p, before[n])}
    assert changed, "nothing moved"
    assert changed <= trainable
    # LoRA B starts at zero, so after one step B has moved (A only gets gradients once B != 0).
    assert any(".lora_B." in n for n in changed)
    assert any("modules_to_save" in n and "classifier" in n for n in changed)


@pytest.mark.parametrize("method", ["lora", "adapter"])
@pytest.mark.parametrize("family", FAMILIES)
def test_merged_model_equals_peft_model(method: str, family: str) -> None:
    base_keys = sorted(_model(family).state_dict())
    peft_model = apply_peft(_model(family), FinetuneConfig(method=method))
    batch = _batch()
    fit(peft_model, lambda epoch: [batch] * 3, 3, TrainerConfig(epochs=1, lr=5e-2, warmup_ratio=0.0))
    peft_model.eval()
    probe = _batch(seed=1)
    inputs = {k: probe[k] for k in ("input_ids", "attention_mask")}
    with torch.no_grad():
        expected = peft_model(**inputs)["logits"]
        plain = merge(peft_model).eval()
        got = plain(**inputs)["logits"]
        untouched = _model(family).eval()(**inputs)["logits"]
    assert type(plain).__name__.endswith("ForSequenceClassification")
    assert sorted(plain.state_dict()) == base_keys  # a plain model: loads like any classifier
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-4)
    assert not torch.allclose(got, untouched, atol=1e-3)  # the adapter did change the function


def test_ia3_is_even_smaller_and_targets_keys_values_and_ffn() -> None:
    model = apply_peft(_model("encoder"), FinetuneConfig(method="adapter"))
    names = [n for n, p in model.named_parameters() if p.requires_grad and "ia3_" in n]
    assert sorted({n.split(".")[-4] + "." + n.split(".")[-3] for n in names}) == [
        "attn.key",
        "attn.value",
        "ffn.down",
    ]
    assert (
        count_parameters(model).fraction
        < count_parameters(apply_peft(_model("encoder"), FinetuneConfig(method="lora"))).fraction
    )


def test_head_modules_and_unknown_method() -> None:
    assert head_modules(_model("encoder")) == ["pooler.dense", "classifier"]
    assert head_modules(_model("decoder")) == ["classifier"]
    with pytest.raises(ConfigError, match="method"):
        apply_peft(_model("encoder"), FinetuneConfig(method="prefix"))
    assert apply_peft(model := _model("encoder"), FinetuneConfig()) is model
