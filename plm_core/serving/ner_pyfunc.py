"""MLflow "models from code" definition of the served NER tagger (see ``classifier_pyfunc.py``).

The predictor is ``plm_core.serving.ner.NerPredictor`` (docs/contracts.md); entities come back as a
JSON list per text with character offsets into that text (``serving/frames.py``).
"""

from __future__ import annotations

from typing import Any

import mlflow
import pandas as pd

from plm_core.serving.frames import ner_frame


class NerPyfunc(mlflow.pyfunc.PythonModel):
    """pyfunc: DataFrame with a ``text`` column -> ``entities`` (JSON string per row)."""

    def load_context(self, context: mlflow.pyfunc.PythonModelContext) -> None:
        from plm_core.serving.ner import NerPredictor

        self.predictor = NerPredictor(context.artifacts["model_dir"])

    def predict(
        self,
        context: mlflow.pyfunc.PythonModelContext,
        model_input: pd.DataFrame,
        params: dict[str, Any] | None = None,
    ) -> pd.DataFrame:
        return ner_frame(self.predictor, model_input)


mlflow.models.set_model(NerPyfunc())
