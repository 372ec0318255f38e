"""MLflow "models from code" definition of the served extractive QA model (see ``classifier_pyfunc.py``).

The predictor is ``plm_core.serving.qa.QaPredictor`` (docs/contracts.md).
"""

from __future__ import annotations

from typing import Any

import mlflow
import pandas as pd

from plm_core.serving.frames import qa_frame


class QaPyfunc(mlflow.pyfunc.PythonModel):
    """pyfunc: DataFrame with ``question`` and ``context`` columns -> ``answer``, ``start``, ``score``."""

    def load_context(self, context: mlflow.pyfunc.PythonModelContext) -> None:
        from plm_core.serving.qa import QaPredictor

        self.predictor = QaPredictor(context.artifacts["model_dir"])

    def predict(
        self,
        context: mlflow.pyfunc.PythonModelContext,
        model_input: pd.DataFrame,
        params: dict[str, Any] | None = None,
    ) -> pd.DataFrame:
        return qa_frame(self.predictor, model_input)


mlflow.models.set_model(QaPyfunc())
