"""The Prefect UI in headless Chromium (Debian's ``/usr/bin/chromium`` driven by Playwright): find the
deployment, open its custom-run form (the pydantic parameters with their descriptions), change one
parameter, submit, and see the run complete with that parameter. Screenshots go to test-output/.
"""

from __future__ import annotations

import re
import shutil
import tempfile
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from tests.integration.test_prefect_server import flow_run, wait_for_state

pytestmark = pytest.mark.integration

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
# DESIGN.md section 7: what Debian's chromium needs to start headless here, with nothing reaching out.
CHROMIUM_FLAGS = [
    "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
    "--disable-component-update", "--disable-sync", "--disable-dev-shm-usage",
]  # fmt: skip
OUTPUT = Path(__file__).resolve().parents[2] / "test-output"


@pytest.fixture(scope="module")
def browser_page():
    playwright = pytest.importorskip("playwright.sync_api", reason="pip install playwright (a dev dependency)")
    if not Path(CHROMIUM).exists():
        pytest.skip("Debian chromium not installed (apt-get install -y chromium); .ci/run installs it")
    profile = tempfile.mkdtemp(prefix="plm-chromium-")
    with playwright.sync_playwright() as p:
        ctx = p.chromium.launch_persistent_context(
            profile, executable_path=CHROMIUM, headless=True, args=CHROMIUM_FLAGS,
            viewport={"width": 1400, "height": 1000},
        )  # fmt: skip
        ctx.set_default_timeout(60_000)
        try:
            yield ctx.new_page()
        finally:
            ctx.close()
            shutil.rmtree(profile, ignore_errors=True)


def test_custom_run_from_the_ui_form_completes_with_the_changed_parameter(prefect_stack, browser_page) -> None:
    page = browser_page
    OUTPUT.mkdir(exist_ok=True)
    dep_id = prefect_stack.deployments["plm-pipeline/nightly"]
    default_name = prefect_stack.deployment_parameters()["params"]["registry"]["model_name"]

    # Deployments list -> the deployment -> Run -> Custom run: the path a user clicks.
    page.goto(f"{prefect_stack.ui}/deployments", wait_until="networkidle", timeout=120_000)
    page.get_by_role("link", name="nightly", exact=True).first.click()
    page.wait_for_url(f"**/deployments/deployment/{dep_id}**")
    page.get_by_role("button", name="Run", exact=True).click()
    page.get_by_text("Custom run", exact=True).click()
    page.wait_for_url(re.compile(f"/deployments/deployment/{dep_id}/run"))  # ?parameters=<the defaults>
    page.get_by_text("Rerun every stage even when a cached output exists.").wait_for()
    run_name = page.locator("input[type=text]").first.input_value()  # the form's generated run name
    page.screenshot(path=str(OUTPUT / "prefect-ui-run-form.png"))

    # The form is pre-filled with the deployment's parameters; change the registered model's name.
    found = page.evaluate(
        """(value) => { const el = [...document.querySelectorAll('textarea, input')].find(e => e.value === value);
                        if (el) el.setAttribute('data-plm-field', 'model_name'); return !!el; }""",
        default_name,
    )
    assert found, f"no form field holds the deployment default {default_name!r}"
    field = page.locator("[data-plm-field=model_name]")
    field.fill("plm-it-ui")
    field.evaluate("e => e.scrollIntoView({block: 'center'})")
    page.screenshot(path=str(OUTPUT / "prefect-ui-changed-parameter.png"))
    page.get_by_role("button", name="Submit", exact=True).click()
    page.wait_for_url(re.compile(f"/deployments/deployment/{dep_id}\\?tab=Runs"))  # back on the deployment

    # The run the form created: this deployment's one run that is neither scheduled nor the test's.
    flt = {"flow_runs": {"deployment_id": {"any_": [dep_id]}, "name": {"any_": [run_name]}}}
    with prefect_stack.client() as c:
        runs = c.post("/flow_runs/filter", json=flt).json()
    assert len(runs) == 1, runs
    run_id = runs[0]["id"]
    run = wait_for_state(prefect_stack, run_id)
    assert run["deployment_id"] == dep_id
    assert run["parameters"]["params"]["registry"]["model_name"] == "plm-it-ui"
    version = MlflowClient(prefect_stack.mlflow).get_model_version_by_alias("plm-it-ui", "candidate")
    assert version.version == "1"
    page.goto(f"{prefect_stack.ui}/runs/flow-run/{run_id}", wait_until="networkidle")
    page.get_by_text("Completed").first.wait_for()
    page.screenshot(path=str(OUTPUT / "prefect-ui-flow-run.png"))
    assert flow_run(prefect_stack, run_id)["state"]["name"] == "Completed"
