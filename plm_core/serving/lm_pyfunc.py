"""MLflow "models from code" definition of the served decoder LM (see ``classifier_pyfunc.py``).

Generation options (``max_new_tokens``, ``do_sample``, ``temperature``, ``top_k``, ``top_p``,
``num_beams``, ``seed``) are MLflow inference ``params``, declared in the logged signature, so a
REST caller sends them as ``{"dataframe_records": [...], "params": {"max_new_tokens": 16}}``.
"""

from __future__ import annotations

from typing import Any

import mlflow
import pandas as pd

from plm_core.serving.frames import lm_frame
from plm_core.serving.lm import LmPredictor


class LmPyfunc(mlflow.pyfunc.PythonModel):
    """pyfunc: DataFrame with a ``prompt`` column -> ``generated_text``."""

    def load_context(self, context: mlflow.pyfunc.PythonModelContext) -> None:
        self.predictor = LmPredictor(context.artifacts["model_dir"])

    def predict(
        self,
        context: mlflow.pyfunc.PythonModelContext,
        model_input: pd.DataFrame,
        params: dict[str, Any] | None = None,
    ) -> pd.DataFrame:
        return lm_frame(self.predictor, model_input, params)


mlflow.models.set_model(LmPyfunc())
