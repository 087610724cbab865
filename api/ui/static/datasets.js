// The data sets page: GET /datasets, refreshed while one is being built, and the upload form
// (POST /datasets as multipart, sent with XMLHttpRequest because fetch reports no upload progress).
"use strict";

(() => {
  const rows = document.getElementById("dataset-rows");
  const form = document.getElementById("upload-form");
  const progress = form.querySelector(".upload-progress");
  let datasets = [];

  async function load() {
    const result = await sagan.api("/datasets");
    if (!result.ok) {
      sagan.notice(`Could not list data sets: ${sagan.errorText(result)}`);
      return;
    }
    datasets = Array.isArray(result.data) ? result.data : result.data.items;
    rows.innerHTML = datasets.map(rowHtml).join("");
    for (const dataset of datasets) {
      if (dataset.status === "ready") {
        const img = rows.querySelector(`tr[data-id="${CSS.escape(dataset.id)}"] .thumb`);
        sagan.showImage(img, `/datasets/${encodeURIComponent(dataset.id)}/preview`);
      }
    }
    document.getElementById("empty").hidden = datasets.length > 0;
    document.getElementById("refresh-state").textContent = datasets.some(sagan.isActive) ? "● live" : "";
    document.body.dataset.loaded = "true";  // the tests wait for it
  }

  function rowHtml(dataset) {
    const link = `/ui/datasets/${encodeURIComponent(dataset.id)}`;
    const classes = dataset.classes && dataset.classes.length ? dataset.classes.length : "";
    return `<tr data-id="${sagan.escape(dataset.id)}">
      <td><a href="${link}">${sagan.escape(dataset.name)}</a><div class="sub"><code>ds:${sagan.escape(dataset.id)}</code></div></td>
      <td><span class="badge status-${sagan.escape(dataset.status)}">${sagan.escape(dataset.status)}</span></td>
      <td>${sagan.number(dataset.images)}</td><td>${classes}</td>
      <td>${sagan.escape((dataset.imsizes || []).map((size) => `${size}px`).join(", "))}</td>
      <td>${sagan.bytes(dataset.size_bytes)}</td>
      <td><a href="${link}"><img class="thumb preview-thumb" alt="preview"></a></td><td>${sagan.age(dataset.created_at)}</td></tr>`;
  }

  form.addEventListener("submit", (event) => {
    event.preventDefault();
    const error = document.getElementById("upload-error");
    error.textContent = "";
    const name = form.elements.name.value.trim(), file = form.elements.file.files[0];
    if (!name || !file) {
      error.textContent = !name ? "name: give the data set a name" : "file: choose a zip or tar archive";
      return;
    }
    const body = new FormData();
    body.append("name", name);
    body.append("file", file);
    const request = new XMLHttpRequest();
    request.open("POST", "/datasets");
    for (const [header, value] of Object.entries(sagan.authHeaders())) request.setRequestHeader(header, value);
    request.setRequestHeader("Accept", "application/json");
    progress.hidden = false;
    request.upload.addEventListener("progress", (update) => {
      const fraction = update.lengthComputable ? update.loaded / update.total : 0;
      document.getElementById("upload-fill").style.width = `${(fraction * 100).toFixed(1)}%`;
      document.getElementById("upload-text").textContent = `${sagan.bytes(update.loaded)} of ${sagan.bytes(file.size)}`;
    });
    request.addEventListener("loadend", () => {
      let data = null;
      try { data = JSON.parse(request.responseText); } catch { data = {detail: request.responseText}; }
      const result = {status: request.status, ok: request.status >= 200 && request.status < 300, data};
      if (!result.ok) {
        progress.hidden = true;
        error.textContent = request.status ? sagan.errorText(result) : "the upload did not reach the API";
        return;
      }
      document.getElementById("upload-text").textContent = "uploaded: the service is checking and packing it";
      form.reset();
      poller.now();
    });
    request.send(body);
  });

  const poller = sagan.poll(load, () => (datasets.some(sagan.isActive) ? 2000 : 10000));
})();
