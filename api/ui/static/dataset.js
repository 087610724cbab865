// One data set's page: GET /datasets/{id} (refreshed while it is being built), its preview grid,
// classes, skipped files and the jobs that trained or evaluated on it; DELETE /datasets/{id}.
"use strict";

(() => {
  const id = document.getElementById("dataset").dataset.datasetId;
  const path = `/datasets/${encodeURIComponent(id)}`;
  let dataset = null;

  async function load() {
    const result = await sagan.api(path);
    if (!result.ok) {
      sagan.notice(result.status === 404 ? "No such data set (or not yours)." : `Could not load the data set: ${sagan.errorText(result)}`);
      return;
    }
    dataset = result.data;
    render();
  }

  function render() {
    document.getElementById("name").textContent = dataset.name;
    document.title = `${dataset.name} · SAGAN`;
    const badge = document.getElementById("status");
    badge.textContent = dataset.status;
    badge.className = `badge status-${dataset.status}`;
    const facts = [
      ["Spec", `ds:${dataset.id}`], ["Images", sagan.number(dataset.images)],
      ["Classes", dataset.classes && dataset.classes.length ? dataset.classes.length : "none"],
      ["Image sizes", (dataset.imsizes || []).map((size) => `${size}px`).join(", ")],
      ["Stored", sagan.bytes(dataset.size_bytes)],
      ["Source", dataset.source.startsWith("upload:") ? "an uploaded archive" : dataset.source],
      ["Skipped files", Object.keys(dataset.bad_images || {}).length], ["Created", sagan.age(dataset.created_at)],
    ];
    document.getElementById("facts").innerHTML = facts.filter(([, value]) => value !== undefined && value !== null && value !== "")
      .map(([label, value]) => `<div><dt>${label}</dt><dd>${sagan.escape(value)}</dd></div>`).join("");
    document.getElementById("failure").hidden = !dataset.error;
    document.getElementById("error").textContent = dataset.error || "";
    document.getElementById("spec").textContent = `ds:${dataset.id}`;
    const classes = dataset.classes || [];
    document.getElementById("classes").innerHTML = classes.map((name) => `<li>${sagan.escape(name)}</li>`).join("");
    document.getElementById("no-classes").hidden = classes.length > 0 || dataset.status !== "ready";
    const bad = Object.entries(dataset.bad_images || {});
    document.getElementById("bad-section").hidden = bad.length === 0;
    document.getElementById("bad-rows").innerHTML = bad
      .map(([name, reason]) => `<tr><td>${sagan.escape(name)}</td><td>${sagan.escape(reason)}</td></tr>`).join("");
    const jobs = dataset.jobs || [];
    document.getElementById("no-jobs").hidden = jobs.length > 0;
    document.getElementById("jobs").innerHTML = jobs.map((job) => {
      const jobId = typeof job === "string" ? job : job.id;
      const what = typeof job === "string" ? "" : ` · ${sagan.escape(job.kind)} · ${sagan.escape(job.status)}`;
      return `<li><a href="/ui/jobs/${encodeURIComponent(jobId)}"><code>${sagan.escape(jobId.slice(0, 8))}</code></a>${what}</li>`;
    }).join("");
    document.getElementById("delete").hidden = false;
    if (dataset.status === "ready") {
      sagan.showImage(document.getElementById("preview-img"), `${path}/preview`).then((shown) => {
        document.getElementById("preview-state").hidden = shown;
      });
    }
    document.body.dataset.loaded = "true";  // the tests wait for it
  }

  document.getElementById("delete").addEventListener("click", async () => {
    if (!confirm(`Delete the data set ${dataset.name} and its packed files?`)) return;
    const result = await sagan.api(path, {method: "DELETE"});
    if (result.ok) location.href = "/ui/datasets";
    else sagan.notice(`Not deleted: ${sagan.errorText(result)}`);
  });

  sagan.poll(load, () => (dataset && sagan.isActive(dataset) ? 2000 : null));
})();
