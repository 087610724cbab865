// The jobs page: GET /jobs (newest first, filtered, paged by its cursor), refreshed while any job runs.
"use strict";

(() => {
  const rows = document.getElementById("job-rows");
  const statusFilter = document.getElementById("filter-status");
  const kindFilter = document.getElementById("filter-kind");
  const older = document.getElementById("older");
  const newest = document.getElementById("newest");
  const params = new URLSearchParams(location.search);
  statusFilter.value = params.get("status") || "";
  kindFilter.value = params.get("kind") || "";
  let cursor = params.get("cursor");  // null: the newest page
  let jobs = [], nextCursor = null;
  const rowsById = new Map();

  function filters() {
    const query = new URLSearchParams();
    if (statusFilter.value) query.set("status", statusFilter.value);
    if (kindFilter.value) query.set("kind", kindFilter.value);
    if (cursor) query.set("cursor", cursor);
    return query;
  }

  async function load() {
    const query = filters();
    query.set("limit", "50");
    const result = await sagan.api(`/jobs?${query}`);
    if (!result.ok) {
      sagan.notice(`Could not list jobs: ${sagan.errorText(result)}`);
      return;
    }
    jobs = result.data.items;
    nextCursor = result.data.next_cursor;
    render();
  }

  function render() {
    // New rows are parsed in one go (one innerHTML for the page, not one per row); all rows are then
    // updated in place, so a refresh keeps their thumbnails.
    const fresh = jobs.filter((job) => !rowsById.has(job.id));
    if (fresh.length) {
      const parsed = document.createElement("tbody");
      parsed.innerHTML = fresh.map(rowHtml).join("");
      for (const row of [...parsed.children]) rowsById.set(row.dataset.id, row);
    }
    const shown = new Set(jobs.map((job) => job.id));
    for (const [id, row] of rowsById) {
      if (!shown.has(id)) {
        row.remove();
        rowsById.delete(id);
      }
    }
    let previous = null;
    for (const job of jobs) {
      const row = rowsById.get(job.id);
      update(row, job);
      const wanted = previous ? previous.nextElementSibling : rows.firstElementChild;
      if (row !== wanted) rows.insertBefore(row, wanted);
      previous = row;
    }
    document.getElementById("empty").hidden = jobs.length > 0;
    older.disabled = !nextCursor;
    newest.disabled = !cursor;
    document.getElementById("refresh-state").textContent = jobs.some(sagan.isActive) ? "● live" : "";
    if (!document.body.dataset.loaded) performance.mark("jobs-table-filled");  // what bench/ui_jobs_page.py times
    document.body.dataset.loaded = "true";  // the tests wait for it
  }

  function rowHtml(job) {
    const link = `/ui/jobs/${encodeURIComponent(job.id)}`;
    return `<tr data-id="${sagan.escape(job.id)}"><td><a href="${link}"><code>${sagan.escape(job.id.slice(0, 8))}</code></a><div class="sub what"></div></td>
      <td class="kind"></td><td><span class="badge"></span></td>
      <td><div class="bar"><div></div></div><div class="sub progress-text"></div></td>
      <td><a href="${link}"><img class="thumb" alt="latest sample grid"></a></td><td class="best"></td><td class="age"></td></tr>`;
  }

  function describe(job) {
    if (job.kind === "sample") return `${job.spec.n} images from ${job.spec.job_id.slice(0, 8)}, step ${job.spec.step}`;
    if (job.kind === "train") return `${job.spec.preset} · ${job.spec.dataset}${job.arm ? ` · arm ${job.arm}` : ""}`;
    if (job.kind === "eval") return `${job.spec.metrics.join(", ")} of ${job.spec.job_id.slice(0, 8)}, step ${job.spec.step}`;
    if (job.kind === "sweep") return job.spec.study ? `study ${job.spec.study}` : "sweep";
    return "";
  }

  function update(row, job) {
    row.querySelector(".what").textContent = describe(job);
    row.querySelector(".kind").textContent = job.kind;
    sagan.setStatus(row.querySelector(".badge"), job);
    sagan.setBar(row.querySelector(".bar"), job);
    row.querySelector(".progress-text").textContent = sagan.progress(job).text;
    // A training job's best evaluation; an eval job's result.
    row.querySelector(".best").textContent = sagan.evalText(job.kind === "eval" ? job.latest_eval : job.best_eval);
    row.querySelector(".age").textContent = sagan.age(job.created_at);
    const thumbnail = latestGrid(job);
    if (thumbnail) sagan.showImage(row.querySelector(".thumb"), `/jobs/${job.id}/samples/latest`, thumbnail);
  }

  // Which grid /samples/latest shows by now (a key: the image is fetched again only when it changes),
  // or null while the job has none: no request for jobs that cannot have one.
  function latestGrid(job) {
    if (job.kind === "sample") return job.status === "succeeded" ? `${job.id}:done` : null;
    if (job.kind !== "train") return null;
    const every = job.spec.sample_every, step = job.progress.step;
    const last = job.status === "succeeded" ? step : Math.floor(step / every) * every;
    return last > 0 ? `${job.id}:${last}` : null;
  }

  function changed() {
    history.replaceState(null, "", `/${filters().toString() ? "?" + filters() : ""}`);
    poller.now();
  }

  statusFilter.addEventListener("change", () => { cursor = null; changed(); });
  kindFilter.addEventListener("change", () => { cursor = null; changed(); });
  older.addEventListener("click", () => { cursor = nextCursor; changed(); });
  newest.addEventListener("click", () => { cursor = null; changed(); });
  const poller = sagan.poll(load, () => (jobs.some(sagan.isActive) ? 2000 : 10000));
})();
