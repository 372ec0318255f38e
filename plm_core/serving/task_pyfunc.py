"""MLflow "models from code" definition of every served model (classification, NER, QA, LM).

``mlflow.pyfunc.log_model(python_model=<this file>, model_config={"task": ...})`` stores this file's
source instead of a pickle, so loading never depends on pickled class paths. The weights, tokenizer
and config travel as the ``model_dir`` artifact and ``plm_core`` as a code path; the task, from the
logged ``model_config``, picks the predictor and the output frame (``serving/frames.py``).
"""

from __future__ import annotations

from typing import Any

import mlflow
import pandas as pd

from plm_core.serving.frames import load_predictor, predict_frame


class TaskPyfunc(mlflow.pyfunc.PythonModel):
    """pyfunc: DataFrame of the task's input columns -> DataFrame of its output columns."""

    def load_context(self, context: mlflow.pyfunc.PythonModelContext) -> None:
        self.task = str(context.model_config["task"])
        self.predictor = load_predictor(self.task, context.artifacts["model_dir"])

    # The pd.DataFrame hint keeps MLflow's type-hint validation off; the logged signature governs.
    def predict(
        self,
        context: mlflow.pyfunc.PythonModelContext,
        model_input: pd.DataFrame,
        params: dict[str, Any] | None = None,
    ) -> pd.DataFrame:
        return predict_frame(self.task, self.predictor, model_input, params)


mlflow.models.set_model(TaskPyfunc())
