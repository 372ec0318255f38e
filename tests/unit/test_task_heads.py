"""Token classification and QA heads over every family's body: shapes, ignored labels, padding
that can never hold an answer, learning, and loading a pretrained body."""

from __future__ import annotations

import pytest
import torch

from plm_core.config import PretrainConfig, model_preset
from plm_core.models.factory import pretraining_model
from plm_core.models.io import load_encoder_into, save_model
from plm_core.models.tasks import ForQuestionAnswering, ForTokenClassification

FAMILIES = [("encoder", ""), ("decoder", ""), ("seq2seq", ""), ("seq2seq", "bart")]


def _cfg(family: str, arch: str):
    extra = {"arch": arch} if arch else {}
    return model_preset(
        "tiny",
        family,
        vocab_size=50,
        hidden_size=32,
        num_heads=2,
        intermediate_size=64,
        num_layers=2,
        max_position=64,
        dropout=0.0,
        attention_dropout=0.0,
        **extra,
    )


@pytest.mark.parametrize(("family", "arch"), FAMILIES)
def test_token_classifier_learns_and_ignores_minus_100(family: str, arch: str) -> None:
    torch.manual_seed(0)
    torch.set_num_threads(1)
    model = ForTokenClassification(_cfg(family, arch), num_labels=3)
    ids = torch.randint(7, 50, (4, 12))
    labels = ids % 3  # a function of the token itself: learnable by any body
    labels[:, -3:] = -100
    ids[:, -3:] = 0
    mask = (labels != -100).long()
    out = model(ids, attention_mask=mask, labels=labels)
    assert out["logits"].shape == (4, 12, 3)
    # Changing the logits at ignored positions cannot change the loss.
    reference = torch.nn.functional.cross_entropy(out["logits"][mask.bool()], labels[mask.bool()])
    assert torch.allclose(out["loss"], reference)
    opt = torch.optim.AdamW(model.parameters(), lr=5e-3)
    for _ in range(150):
        loss = model(ids, attention_mask=mask, labels=labels)["loss"]
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert loss.item() < 0.05


@pytest.mark.parametrize(("family", "arch"), FAMILIES)
def test_qa_head_never_points_at_padding_and_learns(family: str, arch: str) -> None:
    torch.manual_seed(0)
    torch.set_num_threads(1)
    model = ForQuestionAnswering(_cfg(family, arch))
    ids = torch.randint(7, 50, (4, 16))
    mask = torch.ones_like(ids)
    mask[:, 12:] = 0
    ids[:, 12:] = 0
    start, end = torch.tensor([1, 3, 5, 7]), torch.tensor([2, 3, 8, 11])
    out = model(ids, attention_mask=mask)
    assert out["start_logits"].shape == (4, 16)
    assert torch.isinf(out["start_logits"][:, 12:]).all() and torch.isinf(out["end_logits"][:, 12:]).all()
    opt = torch.optim.AdamW(model.parameters(), lr=5e-3)
    for _ in range(150):
        loss = model(ids, attention_mask=mask, start_positions=start, end_positions=end)["loss"]
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert loss.item() < 0.05
    pred = model(ids, attention_mask=mask)
    assert torch.equal(pred["start_logits"].argmax(-1), start) and torch.equal(
        pred["end_logits"].argmax(-1), end
    )


@pytest.mark.parametrize(("family", "arch"), FAMILIES)
def test_pretrained_body_loads_into_task_models(tmp_path, family: str, arch: str) -> None:
    cfg = _cfg(family, arch)
    objective = {"encoder": "mlm", "decoder": "clm", "seq2seq": "span_corruption"}[family]
    pretrained = pretraining_model(cfg, PretrainConfig(objective=objective))
    save_model(pretrained, cfg, tmp_path)
    for model in (ForTokenClassification(cfg, 5), ForQuestionAnswering(cfg)):
        load_encoder_into(model, tmp_path)
        ours = model.encoder.state_dict()
        theirs = {
            k.removeprefix("encoder."): v
            for k, v in pretrained.state_dict().items()
            if k.startswith("encoder.")
        }
        assert ours.keys() == theirs.keys()
        assert all(torch.equal(ours[k], theirs[k]) for k in ours)
