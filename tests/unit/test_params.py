"""Pipeline parameters: presets, --set overrides, and clear errors for wrong keys."""

from __future__ import annotations

from pathlib import Path

import pytest

from flows.params import PipelineParams, build_params
from plm_core.errors import ConfigError


def test_tiny_preset_points_at_shared_data(tmp_path: Path) -> None:
    p = build_params("tiny", data_dir=tmp_path)
    assert p.ingest.paths == [str(tmp_path / "corpus" / "gutenberg")]
    assert p.finetune.train_path.endswith("glue_sst2/train.jsonl")
    assert p.model.hidden_size == 128


def test_overrides_parse_types(tmp_path: Path) -> None:
    p = build_params(
        "tiny",
        ["finetune.epochs=3", "pretrain.lr=0.0005", "ingest.paths=a.txt,b.txt", "registry.model_name=x"],
        data_dir=tmp_path,
    )
    assert p.finetune.epochs == 3 and p.pretrain.lr == 5e-4
    assert p.ingest.paths == ["a.txt", "b.txt"] and p.registry.model_name == "x"


@pytest.mark.parametrize("bad", ["finetune.nope=1", "nosection.x=1", "finetune.epochs"])
def test_bad_override_names_the_problem(bad: str, tmp_path: Path) -> None:
    with pytest.raises(ConfigError):
        build_params("tiny", [bad], data_dir=tmp_path)


def test_unknown_preset() -> None:
    with pytest.raises(ConfigError, match="unknown (model )?preset"):
        build_params("huge")


def test_params_round_trip_as_json(tmp_path: Path) -> None:
    """Prefect stores flow parameters as JSON and validates them back into the model."""
    p = build_params("tiny", data_dir=tmp_path)
    assert PipelineParams.model_validate_json(p.model_dump_json()) == p
