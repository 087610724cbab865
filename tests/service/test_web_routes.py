"""The web pages' server side, over HTTP to a real `sagan api`: the HTML shells, the form built from the
OpenAPI schema, the static files (Plotly from its Python package) and the small REST route the pages use
(GET /presets). What the pages do in a browser: tests/service/test_browser.py."""

from __future__ import annotations

import re
from html.parser import HTMLParser

from api.ui.form import COMMON, FIRST
from sagan_core.config import PRESETS, TrainConfig, make_config
from tests.service.conftest import Api


class Fields(HTMLParser):
    """The submit form's inputs and selects by name, in page order, and every script and stylesheet URL."""

    def __init__(self) -> None:
        super().__init__()
        self.inputs: list[dict[str, str | None]] = []
        self.assets: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        values = dict(attrs)
        if tag in ("input", "select") and values.get("name"):
            self.inputs.append(values)
        if tag == "script" and values.get("src"):
            self.assets.append(values["src"] or "")
        if tag == "link" and values.get("rel") == "stylesheet":
            self.assets.append(values["href"] or "")


def parse(html: str) -> Fields:
    fields = Fields()
    fields.feed(html)
    return fields


def test_root_is_the_jobs_page(api: Api) -> None:
    response = api.client.get("/")
    assert response.status_code == 200 and response.headers["content-type"].startswith("text/html")
    assert 'id="job-rows"' in response.text
    assert '<option>running</option>' in response.text and '<option>sample</option>' in response.text
    # the API docs stay where they were, linked from the page
    assert api.client.get("/docs").status_code == 200


def test_submit_form_has_every_config_field_once_preset_and_dataset_first(api: Api) -> None:
    fields = parse(api.client.get("/ui/submit").text).inputs
    names = [field["name"] for field in fields]
    assert sorted(names) == sorted(TrainConfig.model_fields)
    assert names[:2] == list(FIRST) and names[2:2 + len(COMMON)] == list(COMMON)
    by_name = {field["name"]: field for field in fields}
    assert by_name["steps"]["data-type"] == "integer"
    assert by_name["g_attention"]["data-type"] == "list" and by_name["g_attention"]["data-nullable"] == "true"
    assert by_name["compile"]["type"] == "checkbox"
    assert by_name["loss"]["data-type"] == "choice"


def test_static_files_are_versioned_cached_and_gzipped(api: Api) -> None:
    assets = parse(api.client.get("/ui/jobs/some-id").text).assets
    assert any(url.startswith("/ui/static/plotly.min.js?v=") for url in assets)
    for url in assets:
        plain = api.client.get(url, headers={"Accept-Encoding": "identity"})
        assert plain.status_code == 200, url
        assert plain.headers["cache-control"] == "public, max-age=31536000, immutable"
        assert re.search(r"\?v=[\w.]+$", url)
        packed = api.client.get(url, headers={"Accept-Encoding": "gzip"})
        assert packed.headers["content-encoding"] == "gzip"
        assert packed.content == plain.content  # httpx decodes it
    plotly = api.client.get(next(url for url in assets if "plotly" in url),
                            headers={"Accept-Encoding": "gzip"})
    assert int(plotly.headers["content-length"]) < len(plotly.content) / 2  # 4.8 MB sent as about 1.4
    assert api.client.get("/ui/static/nothing.js").status_code == 404


def test_presets_route_gives_each_presets_overrides_and_resolved_config(api: Api) -> None:
    items = api.client.get("/presets").json()["items"]
    assert [item["name"] for item in items] == list(PRESETS)
    for item in items:
        assert item["overrides"] == PRESETS[item["name"]]
        assert item["config"] == make_config(item["name"]).to_dict()
