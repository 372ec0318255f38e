"""Integration fixtures, shared across test modules (session scope): the MLflow stack
(tests/integration/mlflow_stack.py: server, tiny pipeline against it, served classifier) and the
production Prefect stack (tests/integration/prefect_stack.py)."""

from tests.integration.mlflow_stack import (  # noqa: F401  (session fixtures shared by two modules)
    mlflow_server,
    pipeline_on_server,
    served_classifier,
    tiny_data,
)
from tests.integration.prefect_stack import prefect_stack  # noqa: F401,E402  (production-helper's stack)
