"""MLflow "models from code" definition of the served sequence classifier.

``mlflow.pyfunc.log_model(python_model=<this file>)`` stores this file's source instead of a pickle,
so loading never depends on pickled class paths; the weights, tokenizer and config travel as the
``model_dir`` artifact and ``plm_core`` as a code path.
"""

from __future__ import annotations

from typing import Any

import mlflow
import pandas as pd

from plm_core.serving.classifier import ClassifierPredictor
from plm_core.serving.frames import classification_frame


class ClassifierPyfunc(mlflow.pyfunc.PythonModel):
    """pyfunc: DataFrame with a ``text`` column (or a list / Series of strings) -> label, probabilities."""

    def load_context(self, context: mlflow.pyfunc.PythonModelContext) -> None:
        self.predictor = ClassifierPredictor(context.artifacts["model_dir"])

    # The pd.DataFrame hint keeps MLflow's type-hint validation off; the logged signature governs.
    def predict(
        self,
        context: mlflow.pyfunc.PythonModelContext,
        model_input: pd.DataFrame,
        params: dict[str, Any] | None = None,
    ) -> pd.DataFrame:
        return classification_frame(self.predictor, model_input)


mlflow.models.set_model(ClassifierPyfunc())
