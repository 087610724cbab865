"""The web pages in a real browser (Debian's headless Chromium driven by Playwright) against a real
`sagan up`: submit through the form, watch a job train, move the step slider, open a chart, sample from
a checkpoint, cancel, and see a 422 beside the field at fault. Each page's screenshot is saved under the
temporary folder, or under SAGAN_SCREENSHOTS: `make screenshots` refreshes docs/screenshots/ (the README
shows the jobs, job and sweep pages), so that a test run leaves the checkout as it was."""

from __future__ import annotations

import os
import re
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from playwright.sync_api import Browser, Page, expect, sync_playwright

from tests.service.conftest import (
    TINY,
    Api,
    make_token,
    start_up,
    wait_for,
)

CHROMIUM = "/usr/bin/chromium"
SCREENSHOTS = Path(os.environ.get("SAGAN_SCREENSHOTS") or Path(tempfile.gettempdir()) / "sagan-screenshots")
# No sandbox (tests run as root), no GPU, and nothing that reaches the network on its own.
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync"]
# Long enough to watch (about 7 s on 2 idle cores, minutes on busy ones), a grid every 40 steps.
WATCHED = {**TINY, "steps": 200, "sample_every": 40, "log_every": 5, "checkpoint_every": 100,
           "eval_every": 100, "eval_n": 32}  # SWD at steps 100 and 200: the quality chart
STEPS, EVERY = WATCHED["steps"], WATCHED["sample_every"]
# Every wait on training: seconds when the machine is idle, minutes when other work shares its 2 cores.
TRAINING_S = 600


@pytest.fixture(scope="module")
def service(tmp_path_factory: pytest.TempPathFactory, forkserver_socket: Path) -> Iterator[Api]:
    up, api = start_up(tmp_path_factory.mktemp("browser"), SAGAN_FORKSERVER_SOCKET=str(forkserver_socket))
    try:
        yield api
    finally:
        up.stop()


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    if not Path(CHROMIUM).exists():
        pytest.fail(f"{CHROMIUM} is missing: `apt-get install chromium` (.ci/run does)")
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield browser
        browser.close()


@pytest.fixture
def page(browser: Browser, service: Api) -> Iterator[Page]:
    context = browser.new_context(base_url=service.base_url, viewport={"width": 1280, "height": 900})
    page = context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda error: errors.append(str(error)))
    page.set_default_timeout(30_000)
    yield page
    context.close()
    assert errors == [], f"JavaScript errors on the page: {errors}"


def screenshot(page: Page, name: str, *, full_page: bool = True) -> None:
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    page.wait_for_timeout(600)  # the progress bar's transition
    page.screenshot(path=SCREENSHOTS / f"{name}.png", full_page=full_page)


def bar_width(page: Page) -> float:
    return float(page.locator("#progress-fill").evaluate("element => parseFloat(element.style.width) || 0"))


@pytest.mark.timeout(4 * TRAINING_S)
def test_submit_watch_slide_chart_and_sample(page: Page, service: Api) -> None:
    page.goto("/")
    page.wait_for_selector("body[data-loaded]", state="attached")
    page.get_by_role("link", name="New training job").first.click()
    page.wait_for_selector("body[data-loaded]", state="attached")
    page.select_option("select[name=preset]", label="debug32")
    page.locator("#more-fields summary").click()  # the eval fields are among the folded ones
    for name, value in WATCHED.items():
        if name == "preset":
            continue
        field = page.locator(f"[name={name}]")
        if field.evaluate("element => element.tagName") == "SELECT":
            field.select_option(label=str(value))
        else:
            field.fill(str(value))
    expect(page.locator("#request-body")).to_contain_text(f'"sample_every": {EVERY}')
    screenshot(page, "submit")
    page.get_by_role("button", name="Submit").click()
    page.wait_for_url(re.compile(r"/ui/jobs/[0-9a-f-]+$"))
    job_id = page.url.rsplit("/", 1)[1]
    assert service.job(job_id)["spec"]["steps"] == STEPS  # what the form sent is what the job runs

    # The progress bar moves and the first sample grid appears, without reloading the page.
    first = wait_for(lambda: bar_width(page), TRAINING_S, "the progress bar to start")
    wait_for(lambda: bar_width(page) > first, TRAINING_S, "the progress bar to move")
    expect(page.locator("#sample-img")).to_have_attribute("src", re.compile("^blob:"),
                                                          timeout=TRAINING_S * 1000)
    expect(page.locator("#real-img")).to_have_attribute("src", re.compile("^blob:"))

    # Two grids in, the slider goes back to the first one, and the image follows.
    wait_for(lambda: int(page.locator("#step-slider").get_attribute("max")) >= 1, TRAINING_S,
             "two sample grids")
    page.locator("#step-slider").fill("0")
    expect(page.locator("#step-label")).to_contain_text(f"step {EVERY} (1 of")
    expect(page.locator("#sample-img")).to_have_attribute("data-key", re.compile(f"^{EVERY}:"))
    first_grid = page.locator("#sample-img").get_attribute("src")

    # A chart opens full size with both loss curves.
    page.locator('[data-chart="losses"] .expand').click()
    expect(page.locator("#chart-dialog")).to_be_visible()
    expect(page.locator("#chart-dialog-plot .scatterlayer .trace")).to_have_count(2)
    expect(page.locator("#chart-dialog-plot .legendtext")).to_have_text(["d_loss", "g_loss"])
    screenshot(page, "chart", full_page=False)
    page.get_by_role("button", name="Close").click()
    expect(page.locator("#chart-dialog")).to_be_hidden()

    # To the end: the status, the last grid, and checkpoints with working download links.
    expect(page.locator("#status")).to_have_text("succeeded", timeout=TRAINING_S * 1000)
    grids = STEPS // EVERY
    # The status is drawn before the poll's new grids arrive: wait for the last grid to be listed.
    expect(page.locator("#step-slider")).to_have_attribute("max", str(grids - 1))
    page.locator("#step-slider").fill(str(grids - 1))
    expect(page.locator("#step-label")).to_contain_text(f"step {STEPS} ({grids} of {grids})")
    expect(page.locator("#sample-img")).to_have_attribute("data-key", re.compile(f"^{STEPS}:"))
    expect(page.locator("#sample-img")).not_to_have_attribute("src", first_grid)
    expect(page.locator("#checkpoint-rows tr").first).to_contain_text(str(STEPS))
    # The checkpoint pickers follow the newest checkpoint (the attention panel's stayed on the first it saw).
    for picker in ("#sample-form", "#attention-form"):
        expect(page.locator(f"{picker} [name=step]")).to_have_value(str(STEPS))
    for chart in ("quality", "losses", "logits", "gamma", "speed"):
        expect(page.locator(f'[data-chart="{chart}"] .scatterlayer .trace').first).to_be_attached()
    download = page.locator("#checkpoint-rows a").first.get_attribute("href")
    assert service.client.get(download).status_code == 200
    expect(page.locator("#config-diff")).to_contain_text("sample_every")
    expect(page.locator("#facts")).to_contain_text(re.compile(r"Best evaluation\s*swd \d.* @ (100|200)"))
    screenshot(page, "job")

    # Sample 16 images from the newest checkpoint; the sample job's page shows its grid.
    page.fill("#sample-form [name=n]", "16")
    page.get_by_role("button", name="Sample").click()
    page.locator("#sample-result a").click()
    expect(page.locator("#status")).to_have_text("succeeded", timeout=TRAINING_S * 1000)
    expect(page.locator("#sample-img")).to_have_attribute("src", re.compile("^blob:"))
    expect(page.locator("#facts")).to_contain_text("16, seed 0")
    screenshot(page, "sample-job")

    # Evaluate the newest checkpoint: a bad sample count is shown beside its field, then SWD runs and the
    # evaluation job's page shows the result.
    page.go_back()
    page.wait_for_selector("body[data-loaded]", state="attached")
    expect(page.locator("#eval-form [name=metrics]")).to_have_value("swd")
    page.fill("#eval-form [name=n]", "1")
    page.get_by_role("button", name="Evaluate").click()
    expect(page.locator('#eval-form [data-error-for="n"]')).to_contain_text("greater than or equal to 2")
    page.fill("#eval-form [name=n]", "32")
    page.get_by_role("button", name="Evaluate").click()
    page.locator("#eval-result a").click()
    expect(page.locator("#status")).to_have_text("succeeded", timeout=TRAINING_S * 1000)
    expect(page.locator("#facts")).to_contain_text(re.compile(r"Result\s*swd \d"))

    # The jobs page lists all three, newest first, with the training job's latest grid as its thumbnail
    # and the evaluation's result in its "best metric" column.
    page.goto("/")
    rows = page.locator("#job-rows tr")
    expect(rows).to_have_count(3)
    expect(rows.nth(0).locator(".kind")).to_have_text("eval")
    expect(rows.nth(0).locator(".best")).to_contain_text("swd")
    expect(rows.nth(1).locator(".kind")).to_have_text("sample")
    trained_row = page.locator(f'#job-rows tr[data-id="{job_id}"]')
    expect(trained_row.locator(".badge")).to_have_text("succeeded")
    expect(trained_row.locator(".progress-text")).to_have_text(f"{STEPS} / {STEPS}")
    expect(trained_row.locator("img.thumb")).to_have_attribute("src", re.compile("^blob:"))
    page.select_option("#filter-kind", "train")
    expect(rows).to_have_count(1)
    assert page.url.endswith("/?kind=train")
    page.select_option("#filter-kind", "")
    expect(rows).to_have_count(3)
    screenshot(page, "jobs")


@pytest.mark.timeout(2 * TRAINING_S)
def test_cancel_from_the_job_page(page: Page, service: Api) -> None:
    job = service.submit({"kind": "train", "config": {**TINY, "steps": 100_000}})
    page.goto(f"/ui/jobs/{job['id']}")
    page.on("dialog", lambda dialog: dialog.accept())
    expect(page.locator("#status")).to_have_text(re.compile("queued|running"))
    page.get_by_role("button", name="Cancel").click()
    expect(page.locator("#status")).to_have_text("cancelled", timeout=TRAINING_S * 1000)
    expect(page.get_by_role("button", name="Cancel")).to_be_hidden()
    assert service.job(job["id"])["status"] == "cancelled"
    screenshot(page, "cancelled")


def test_the_job_page_shows_a_configs_warning(page: Page, service: Api) -> None:
    job = service.submit({"kind": "train", "config": {**TINY, "steps": 100_000, "loss": "wgan-gp",
                                                      "d_norm": "batch"}})
    page.goto(f"/ui/jobs/{job['id']}")
    expect(page.locator("#warnings")).to_be_visible()
    expect(page.locator("#warnings li")).to_have_text(re.compile("^warning: loss wgan-gp with d_norm batch"))
    screenshot(page, "warning")
    service.client.post(f"/jobs/{job['id']}/cancel")
    plain = service.submit({"kind": "train", "config": {**TINY, "steps": 100_000}})
    page.goto(f"/ui/jobs/{plain['id']}")
    expect(page.locator("#status")).to_have_text(re.compile("queued|running"))
    expect(page.locator("#warnings")).to_be_hidden()
    service.client.post(f"/jobs/{plain['id']}/cancel")


@pytest.mark.timeout(120)
def test_a_422_shows_beside_the_field_at_fault(page: Page, service: Api) -> None:
    page.goto("/ui/submit")
    page.wait_for_selector("body[data-loaded]", state="attached")
    page.fill("[name=steps]", "a lot")
    page.get_by_role("button", name="Submit").click()
    expect(page.locator('[data-error-for="config.steps"]')).to_have_text("Input should be a valid integer")
    expect(page.locator('label[data-field="steps"]')).to_have_class(re.compile("invalid"))
    screenshot(page, "submit-422")
    # A field folded away opens to show its error; fixing the first one clears it.
    page.fill("[name=steps]", "100")
    page.locator("#more-fields summary").click()
    page.fill("[name=g_conv_dim]", "12")
    page.locator("#more-fields summary").click()
    page.get_by_role("button", name="Submit").click()
    expect(page.locator('[data-error-for="config.g_conv_dim"]')).to_contain_text("multiple of 8")
    expect(page.locator("#more-fields")).to_have_attribute("open", "")
    expect(page.locator('[data-error-for="config.steps"]')).to_have_text("")
    assert all(job["spec"].get("g_conv_dim") != 12 for job in service.client.get("/jobs").json()["items"])



@pytest.mark.timeout(2 * TRAINING_S)
def test_a_sweeps_page_lists_its_arms_and_links_the_report(page: Page, service: Api) -> None:
    quick = {**TINY, "steps": 10, "sample_every": 5, "checkpoint_every": 10, "eval_every": 5, "eval_n": 16}
    sweep = service.submit({"kind": "sweep", "study": "attention", "base": quick, "seeds": [0]})
    service.wait_status(sweep["id"], {"succeeded", "failed"}, timeout=TRAINING_S)
    page.goto(f"/ui/jobs/{sweep['id']}")
    page.wait_for_selector("body[data-loaded]", state="attached")
    expect(page.locator("#kind")).to_have_text("sweep · study attention")
    expect(page.locator("#status")).to_have_text("succeeded")
    rows = page.locator("#arm-rows tr")
    expect(rows).to_have_count(4)
    expect(rows.first).to_contain_text("none")
    expect(rows.first).to_contain_text(re.compile(r"succeeded[\s\S]*swd \d"))
    expect(page.locator("#sweep-question")).to_contain_text("self-attention")
    expect(page.locator("#samples-section")).to_be_hidden()
    screenshot(page, "sweep")

    report = service.client.get(page.locator("#report-link").get_attribute("href"))
    assert report.status_code == 200 and "<td>g-only</td>" in report.text
    rows.nth(1).get_by_role("link").click()
    expect(page.locator("#facts")).to_contain_text(f"{sweep['id'][:8]}, arm g-only")


@pytest.mark.timeout(120)
def test_the_form_submits_a_study_as_a_sweep(page: Page, service: Api) -> None:
    page.goto("/ui/submit")
    page.wait_for_selector("body[data-loaded]", state="attached")
    expect(page.locator("#seeds-field")).to_be_hidden()
    page.select_option("#study", "ttur")
    expect(page.locator("#seeds-field")).to_be_visible()
    page.fill("#seeds", "0,1")
    page.fill("[name=steps]", "a lot")
    body = page.locator("#request-body")
    expect(body).to_contain_text('"kind": "sweep"')
    expect(body).to_contain_text('"study": "ttur"')
    expect(body).to_contain_text('"steps": "a lot"')
    before = len(service.client.get("/jobs", params={"limit": 200}).json()["items"])
    page.get_by_role("button", name="Submit").click()
    # The sweep's base fields are the form's fields: the 422 shows beside steps, and nothing is created.
    expect(page.locator('[data-error-for="config.steps"]')).to_have_text("Input should be a valid integer")
    assert len(service.client.get("/jobs", params={"limit": 200}).json()["items"]) == before
@pytest.mark.timeout(180)
def test_with_tokens_the_page_asks_for_one_and_works_with_it(browser: Browser, api: Api,
                                                             service_env: dict[str, str]) -> None:
    """Against `sagan api` (SAGAN_AUTH=tokens): the open HTML shell shows the "enter a token" notice on the
    API's 401, and lists the jobs once a token is saved in the page (it stays in localStorage)."""
    job = api.submit({"kind": "train", "config": {**TINY, "steps": 100_000}})
    api.client.post(f"/jobs/{job['id']}/cancel")
    context = browser.new_context(base_url=api.base_url, viewport={"width": 1280, "height": 900})
    page = context.new_page()
    try:
        page.goto("/")
        expect(page.locator("#auth-notice")).to_be_visible()
        expect(page.locator("#auth-notice")).to_contain_text("needs an API token")
        page.fill("#token", make_token(service_env, "browser-user", admin=True))
        page.get_by_role("button", name="Save").click()
        expect(page.locator(f'tr[data-id="{job["id"]}"]')).to_be_visible()
        expect(page.locator("#auth-notice")).to_be_hidden()
        page.goto(f"/ui/jobs/{job['id']}")  # the token is still there on the next page
        expect(page.locator("#status")).to_have_text("cancelled")
    finally:
        context.close()


def _shapes_archive(path: Path) -> Path:
    """A zip of 24 drawings of the built-in shapes, one folder per shape: a labelled data set to upload."""
    import io
    import zipfile

    from PIL import Image

    from sagan_core.data import build_dataset

    shapes = build_dataset("shapes:24", 48, pixels=True)
    with zipfile.ZipFile(path, "w") as archive:
        for i in range(len(shapes)):
            encoded = io.BytesIO()
            Image.fromarray(shapes[i]).save(encoded, format="PNG")
            archive.writestr(f"{shapes.class_names[shapes.label(i)]}/{i}.png", encoded.getvalue())
    return path


@pytest.mark.timeout(2 * TRAINING_S)
def test_upload_a_data_set_see_it_ready_and_offered_by_the_form(page: Page, service: Api,
                                                                tmp_path: Path) -> None:
    page.goto("/ui/datasets")
    page.wait_for_selector("body[data-loaded]", state="attached")
    page.fill("#upload-form [name=name]", "three shapes")
    page.set_input_files("#upload-form [name=file]", str(_shapes_archive(tmp_path / "shapes.zip")))
    page.get_by_role("button", name="Upload").click()
    expect(page.locator("#upload-text")).to_contain_text("uploaded")
    row = page.locator("#dataset-rows tr", has_text="three shapes")
    expect(row.locator(".badge")).to_have_text("ready", timeout=TRAINING_S * 1000)
    expect(row).to_contain_text("32px")
    expect(row.locator(".thumb")).to_have_attribute("src", re.compile("^blob:"))
    screenshot(page, "datasets")
    dataset_id = row.get_attribute("data-id")
    row.get_by_role("link", name="three shapes").click()
    expect(page.locator("#name")).to_have_text("three shapes")
    expect(page.locator("#classes li")).to_have_text(["circle", "square", "triangle"])
    expect(page.locator("#preview-img")).to_have_attribute("src", re.compile("^blob:"))
    expect(page.locator("#facts")).to_contain_text("24")
    screenshot(page, "dataset")
    page.goto("/ui/submit")
    page.wait_for_selector("body[data-loaded]", state="attached")
    expect(page.locator(f'#ready-datasets option[value="ds:{dataset_id}"]')).to_have_count(1)
    assert page.locator("[name=dataset]").get_attribute("list") == "ready-datasets"
