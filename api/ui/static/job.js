// One job's page: GET /jobs/{id} and its metrics, samples and checkpoints, polled while it is active.
"use strict";

(() => {
  const $ = (id) => document.getElementById(id);
  const jobId = $("job").dataset.jobId;
  const base = `/jobs/${encodeURIComponent(jobId)}`;
  let job = null, missing = false;
  let seenStep = null, seenStatus = null;  // what the artifacts below were last fetched for

  // ---- the job itself ------------------------------------------------------------------------------

  async function refreshJob() {
    const result = await sagan.api(base);
    if (!result.ok) {
      sagan.notice(result.status === 404 ? `No job ${jobId}.` : `Could not load the job: ${sagan.errorText(result)}`);
      missing = result.status === 404;
      return;
    }
    const first = job === null;
    job = result.data;
    renderJob();
    if (first) await renderConfig();
    if (job.kind === "sweep") {
      await renderSweep();
      document.body.dataset.loaded = "true";
      return;  // a sweep has no files of its own: its children do
    }
    // Artifacts change only as the job moves: skip their requests on a poll that saw no change.
    if (job.progress.step !== seenStep || job.status !== seenStatus) {
      seenStep = job.progress.step;
      seenStatus = job.status;
      await Promise.all([refreshSamples(), job.kind === "train" && refreshMetrics(),
                         job.kind === "train" && refreshEvals(), job.kind === "train" && refreshCheckpoints()]);
    }
    document.body.dataset.loaded = "true";
  }

  function renderJob() {
    $("kind").textContent = job.kind === "train" ? `training · ${job.spec.preset}`
      : job.kind === "sweep" ? `sweep${job.spec.study ? ` · study ${job.spec.study}` : ""}` : `${job.kind}`;
    sagan.setStatus($("status"), job);
    sagan.setBar($("progress-fill").parentElement, job);
    $("progress-text").textContent = sagan.progress(job).text || job.status;
    $("cancel").hidden = !sagan.isActive(job);
    $("cancel").disabled = job.cancel_requested;
    $("cancel").textContent = job.cancel_requested ? "Cancelling…" : "Cancel";
    renderFacts();
    $("warnings").hidden = !job.warnings.length;
    $("warnings").innerHTML = job.warnings.map((text) => `<li>warning: ${sagan.escape(text)}</li>`).join("");
    $("failure").hidden = !job.error;
    $("error").textContent = job.error || "";
    $("log").hidden = !job.log_tail;
    $("log-tail").textContent = job.log_tail || "";
    for (const id of ["checkpoints-section", "real-figure"]) $(id).hidden = job.kind !== "train";
    $("samples-section").hidden = job.kind === "sweep";
  }

  function renderFacts() {
    const facts = job.kind === "sweep" ? [["Runs", `${job.children.length}`]] : [["Attempt", `${job.attempt} of ${job.max_attempts}`]];
    if (job.parent_id) {
      facts.push(["Sweep", `<a href="/ui/jobs/${encodeURIComponent(job.parent_id)}">${sagan.escape(job.parent_id.slice(0, 8))}</a>, arm ${sagan.escape(job.arm)}`]);
    }
    if (job.priority !== "normal") facts.push(["Priority", sagan.escape(job.priority)]);
    if (job.resumed_from_step != null) facts.push(["Resumed from step", sagan.number(job.resumed_from_step)]);
    // Lineage of continued trainings (POST /jobs/{id}/continue).
    const jobLink = (id) => `<a href="/ui/jobs/${encodeURIComponent(id)}">${sagan.escape(id.slice(0, 8))}</a>`;
    if (job.continued_from) facts.push(["Continued from", `${jobLink(job.continued_from)} at step ${sagan.number(job.continued_from_step)}`]);
    if (job.continued_by && job.continued_by.length) facts.push(["Continued by", job.continued_by.map(jobLink).join(", ")]);
    const metrics = job.metrics || {};
    if (metrics.img_per_s) facts.push(["Speed", `${sagan.number(metrics.img_per_s, 3)} img/s`]);
    if (job.status === "running" && metrics.img_per_s && job.progress.total_steps) {
      const left = (job.progress.total_steps - job.progress.step) * job.spec.batch_size / metrics.img_per_s;
      facts.push(["Time left", `about ${sagan.duration(left)}`]);
    }
    for (const name of ["d_loss", "g_loss"]) if (metrics[name] != null) facts.push([name, sagan.number(metrics[name])]);
    if (job.best_eval) facts.push(["Best evaluation", sagan.evalText(job.best_eval)]);
    // The score the best checkpoint was picked by is biased; an eval job's held-out score of it is not.
    if (job.best_held_out_eval) facts.push(["Best, held-out", sagan.evalText(job.best_held_out_eval)]);
    if (job.latest_checkpoint_step != null) facts.push(["Latest checkpoint", `step ${sagan.number(job.latest_checkpoint_step)}`]);
    if (job.kind === "sample") {
      facts.push(["Source", `<a href="/ui/jobs/${encodeURIComponent(job.spec.job_id)}">${sagan.escape(job.spec.job_id.slice(0, 8))}</a> at step ${sagan.number(job.spec.step)}`]);
      facts.push(["Images", job.spec.interpolate ? `a walk of ${job.spec.frames} from seed ${job.spec.interpolate[0]} to ${job.spec.interpolate[1]}`
        : `${job.spec.n}, seed ${job.spec.seed}`]);
      if (job.spec.truncation != null) facts.push(["Truncation", `ψ ${sagan.number(job.spec.truncation)}`]);
    }
    if (job.kind === "eval") {
      facts.push(["Source", `<a href="/ui/jobs/${encodeURIComponent(job.spec.job_id)}">${sagan.escape(job.spec.job_id.slice(0, 8))}</a> at step ${sagan.number(job.spec.step)}`]);
      facts.push(["Measured", `${sagan.escape(job.spec.metrics.join(", "))} on ${sagan.number(job.spec.n)} samples of ${sagan.escape(job.spec.dataset)}`]);
      if (job.latest_eval) facts.push(["Result", sagan.evalText({metrics: job.latest_eval.metrics})]);
    }
    facts.push(["Queue", sagan.escape(job.queue)], ["Created", sagan.age(job.created_at)]);
    if (job.started_at) facts.push(["Started", sagan.age(job.started_at)]);
    if (job.finished_at) {
      facts.push(["Finished", sagan.age(job.finished_at)]);
      if (job.started_at) facts.push(["Ran for", sagan.duration((Date.parse(job.finished_at) - Date.parse(job.started_at)) / 1000)]);
    }
    $("facts").innerHTML = facts.map(([name, value]) => `<div><dt>${name}</dt><dd>${value}</dd></div>`).join("");
  }

  // ---- config and its differences from the preset -------------------------------------------------

  async function renderConfig() {
    if (job.kind !== "train") return;
    const presets = await sagan.api("/presets");
    const preset = presets.ok ? presets.data.items.find((p) => p.name === job.spec.preset) : null;
    const same = (name) => preset && JSON.stringify(preset.config[name]) === JSON.stringify(job.spec[name]);
    const show = (value) => sagan.escape(JSON.stringify(value));
    const changed = Object.keys(job.spec).filter((name) => name !== "preset" && !same(name));
    $("config-diff").innerHTML = !preset ? `<p class="muted">Preset ${sagan.escape(job.spec.preset)} is unknown to this API.</p>`
      : changed.length === 0 ? `<p class="muted">The preset <code>${sagan.escape(preset.name)}</code> unchanged.</p>`
      : `<h3>Differences from the preset <code>${sagan.escape(preset.name)}</code></h3>
         <table class="kv"><thead><tr><th>field</th><th>preset</th><th>this job</th></tr></thead><tbody>
         ${changed.map((name) => `<tr><td>${sagan.escape(name)}</td><td>${show(preset.config[name])}</td><td>${show(job.spec[name])}</td></tr>`).join("")}
         </tbody></table>`;
    $("config-full").innerHTML = Object.entries(job.spec).map(([name, value]) =>
      `<tr class="${changed.includes(name) ? "changed" : ""}"><td>${sagan.escape(name)}</td><td>${show(value)}</td></tr>`).join("");
    $("config-section").hidden = false;
  }

  // ---- a sweep: its arms (children) and the link to its report ------------------------------------------

  let studies = null;
  async function renderSweep() {
    if (studies === null && job.spec.study) {
      const result = await sagan.api("/studies");
      studies = result.ok ? result.data.items : [];
      const study = studies.find((item) => item.name === job.spec.study);
      $("sweep-question").textContent = study ? study.question : "";
    }
    $("report-link").href = `${base}/report`;
    $("arm-rows").innerHTML = job.children.map((child) => {
      const bar = sagan.progress(child).text;
      // The arm names the link: children made in one millisecond share their ids' first characters.
      return `<tr data-child="${sagan.escape(child.id)}"><td><a href="/ui/jobs/${encodeURIComponent(child.id)}">${sagan.escape(child.arm)}</a></td><td>${child.seed}</td>
        <td><span class="badge status-${sagan.escape(child.status)}">${sagan.escape(child.status)}</span></td>
        <td>${sagan.escape(bar)}</td>
        <td>${sagan.evalText(child.best_eval)}</td></tr>`;
    }).join("");
    $("sweep-section").hidden = false;
  }

  // ---- sample grids: a step slider over every grid, the real-data grid beside --------------------------

  let samples = [];
  const slider = $("step-slider");

  async function refreshSamples() {
    const result = await sagan.api(`${base}/samples`);
    if (!result.ok) return;
    const following = slider.disabled || Number(slider.value) >= samples.length - 1;
    samples = result.data.items;
    slider.max = Math.max(0, samples.length - 1);
    slider.disabled = slider.hidden = samples.length < 2;
    if (following) slider.value = samples.length - 1;  // at the newest grid: stay there as grids arrive
    showSample();
    if (job.kind === "train") await sagan.showImage($("real-img"), `${base}/samples/real`);  // once it exists
  }

  function showSample() {
    if (samples.length === 0) return;
    const index = Math.min(Number(slider.value), samples.length - 1);
    const item = samples[index];
    $("step-label").textContent = `step ${sagan.number(item.step)} (${index + 1} of ${samples.length})`;
    sagan.showImage($("sample-img"), item.url, `${item.step}:${item.created_at}`);
  }


  slider.addEventListener("input", showSample);

  // ---- charts: one Plotly chart per group of metrics -----------------------------------------------

  const metrics = [];  // metrics.jsonl lines, and evals.jsonl records (evaluations during training)
  let evals = [];
  const numbers = (record) => Object.fromEntries(Object.entries(record.metrics || {}).filter(([, v]) => typeof v === "number"));
  const CHARTS = [
    {id: "quality", title: "Sample quality (evaluations during training)", lines: () => evals, series: numbers},
    {id: "losses", title: "D and G loss", series: (m) => ({d_loss: m.d_loss, g_loss: m.g_loss})},
    {id: "logits", title: "D output on real and fake (mean logit)", series: (m) => ({real: m.d_out_real, fake: m.d_out_fake})},
    {id: "gamma", title: "Attention γ per layer", series: (m) => m.gamma || {}, link: ["#attention-section", "Attention maps"]},
    {id: "speed", title: "Throughput (img/s)", series: (m) => ({"img/s": m.img_per_s})},
    {id: "lr", title: "Learning rate (G)", series: (m) => ({lr: m.lr}), yaxis: {type: "log"}},
  ];

  async function refreshMetrics() {
    const last = metrics.length ? metrics[metrics.length - 1].step : null;
    const result = await sagan.api(`${base}/metrics${last == null ? "" : `?after_step=${last}`}`);
    if (!result.ok || result.data.items.length === 0) return;
    metrics.push(...result.data.items);
    $("charts-section").hidden = false;
    for (const chart of CHARTS) drawChart(chart);
  }

  async function refreshEvals() {
    const result = await sagan.api(`${base}/evals`);
    if (!result.ok || result.data.items.length === evals.length) return;
    evals = result.data.items.filter((record) => record.source === "train");
    $("charts-section").hidden = false;
    drawChart(CHARTS[0]);
  }

  function traces(chart) {
    const byName = new Map();
    for (const line of chart.lines ? chart.lines() : metrics) {
      for (const [name, value] of Object.entries(chart.series(line))) {
        if (value == null) continue;
        if (!byName.has(name)) byName.set(name, {x: [], y: []});
        byName.get(name).x.push(line.step);
        byName.get(name).y.push(value);
      }
    }
    // Markers while there are few points (a line needs two).
    return [...byName].map(([name, {x, y}]) => ({name, x, y, type: "scatter", mode: x.length < 30 ? "lines+markers" : "lines",
                                                  line: {width: 1.5}, marker: {size: 4}}));
  }

  const PLOT_CONFIG = {displaylogo: false, responsive: true, modeBarButtonsToRemove: ["lasso2d", "select2d"]};
  function layout(chart, height) {
    return {height, margin: {l: 56, r: 12, t: 8, b: 36}, font: {size: 11},
            xaxis: {title: {text: "step"}, zeroline: false}, yaxis: {zeroline: false, exponentformat: "e", ...chart.yaxis},
            legend: {orientation: "h", y: 1.12}, paper_bgcolor: "rgba(0,0,0,0)", plot_bgcolor: "#fbfcfd"};
  }

  function drawChart(chart) {
    let card = document.querySelector(`[data-chart="${chart.id}"]`);
    const data = traces(chart);
    if (data.length === 0) return;
    if (!card) {
      card = document.createElement("div");
      card.className = "card";
      card.dataset.chart = chart.id;
      const link = chart.link ? `<a href="${chart.link[0]}" class="chart-link">${chart.link[1]}</a>` : "";
      card.innerHTML = `<div class="card-head"><h3>${chart.title}</h3>${link}<button type="button" class="expand">Expand</button></div><div class="chart"></div>`;
      card.querySelector(".expand").addEventListener("click", () => expand(chart));
      $("charts").append(card);
    }
    Plotly.react(card.querySelector(".chart"), data, layout(chart, 240), PLOT_CONFIG);
    if (expanded === chart) drawExpanded();
  }

  let expanded = null;  // the chart open full size, kept up to date like the others
  function drawExpanded() {
    Plotly.react($("chart-dialog-plot"), traces(expanded), layout(expanded, $("chart-dialog-plot").clientHeight), PLOT_CONFIG);
  }
  function expand(chart) {
    expanded = chart;
    $("chart-dialog-title").textContent = chart.title;
    $("chart-dialog").showModal();
    drawExpanded();
  }
  $("chart-dialog-close").addEventListener("click", () => $("chart-dialog").close());
  $("chart-dialog").addEventListener("close", () => {
    expanded = null;
    Plotly.purge($("chart-dialog-plot"));
  });

  // ---- checkpoints, and sampling from one -----------------------------------------------------------

  async function refreshCheckpoints() {
    const result = await sagan.api(`${base}/checkpoints`);
    if (!result.ok) return;
    const items = result.data.items;
    $("checkpoint-rows").innerHTML = items.slice().reverse().map((item) =>
      `<tr><td>${sagan.number(item.step)}</td><td>${sagan.age(item.created_at)}</td>
       <td><a href="${sagan.escape(item.url)}" download="${sagan.escape(jobId.slice(0, 8))}-step-${item.step}.pt">model.pt</a></td></tr>`).join("");
    $("no-checkpoints").hidden = items.length > 0;
    const form = $("sample-form");
    form.hidden = items.length === 0;
    sagan.fillCheckpoints(form.elements.step, items);
    const evalForm = $("eval-form");
    evalForm.hidden = items.length === 0;
    sagan.fillCheckpoints(evalForm.elements.step, items,
      job.best_eval ? `<option value="best">the best (step ${sagan.number(job.best_eval.step)})</option>` : "");
    document.dispatchEvent(new CustomEvent("sagan:checkpoints", {detail: items}));  // attention.js's picker
    if (!evalForm.elements.metrics.value) evalForm.elements.metrics.value = (job.spec.eval_metrics || ["swd"]).join(",");
  }
  // A checkpoint the API serves itself (a file:// store) needs the token, which a plain link does not send:
  // fetch it with the token and save the blob. Presigned storage links (another origin) open directly.
  $("checkpoint-rows").addEventListener("click", async (event) => {
    const link = event.target.closest("a[download]");
    if (!link || new URL(link.href).origin !== location.origin || link.dataset.blob) return;
    event.preventDefault();
    const response = await fetch(link.href, {headers: sagan.authHeaders()});
    if (!response.ok) {
      sagan.notice(`Could not download the checkpoint: HTTP ${response.status}`);
      return;
    }
    const saved = document.createElement("a");
    saved.href = URL.createObjectURL(await response.blob());
    saved.download = link.download;
    saved.dataset.blob = "true";
    saved.click();
    setTimeout(() => URL.revokeObjectURL(saved.href), 60000);
  });
  // The report, like a checkpoint, needs the token: fetched with it, shown from a blob in a new tab (opened
  // first, while the click still counts as the user's, so no pop-up blocker stops it).
  $("report-link").addEventListener("click", async (event) => {
    event.preventDefault();
    const tab = window.open("", "_blank");
    const response = await fetch($("report-link").href, {headers: sagan.authHeaders()});
    if (!response.ok) {
      if (tab) tab.close();
      sagan.notice(`Could not open the report: ${response.status === 409 ? "no arm has trained yet" : `HTTP ${response.status}`}`);
      return;
    }
    const url = URL.createObjectURL(new Blob([await response.text()], {type: "text/html"}));
    if (tab) tab.location = url; else location.assign(url);
  });

  // Text as JSON where it is a number, else as typed: the API answers a 422 naming the field.
  const value = (text) => (/^\s*-?\d+(\.\d+)?\s*$/.test(text) ? Number(text) : text);

  $("sample-form").addEventListener("submit", async (event) => {
    event.preventDefault();
    const form = event.target;
    sagan.clearErrors(form);
    const body = {kind: "sample", source: {job_id: jobId, step: Number(form.elements.step.value)},
                  n: value(form.elements.n.value), seed: value(form.elements.seed.value)};
    const result = await sagan.api("/jobs", {method: "POST", body});
    if (result.ok) {
      $("sample-result").innerHTML = `<span class="muted">Sample job <a href="/ui/jobs/${result.data.id}">${result.data.id.slice(0, 8)}</a> queued.</span>`;
    } else {
      sagan.showErrors(form, result, $("sample-result"));
    }
  });

  $("eval-form").addEventListener("submit", async (event) => {
    event.preventDefault();
    const form = event.target;
    sagan.clearErrors(form);
    const step = form.elements.step.value;
    const body = {kind: "eval", source: {job_id: jobId, step: step === "best" ? "best" : Number(step)},
                  metrics: form.elements.metrics.value.split(",").map((name) => name.trim()).filter(Boolean),
                  n: value(form.elements.n.value)};
    const result = await sagan.api("/jobs", {method: "POST", body});
    if (result.ok) {
      $("eval-result").innerHTML = `<span class="muted">Evaluation job <a href="/ui/jobs/${result.data.id}">${result.data.id.slice(0, 8)}</a> queued.</span>`;
    } else {
      sagan.showErrors(form, result, $("eval-result"));
    }
  });

  // ---- cancel -------------------------------------------------------------------------------------

  $("cancel").addEventListener("click", async () => {
    if (!confirm(`Cancel job ${jobId.slice(0, 8)}? A running job stops within seconds.`)) return;
    $("cancel").disabled = true;
    const result = await sagan.api(`${base}/cancel`, {method: "POST"});
    if (!result.ok) sagan.notice(`Could not cancel: ${sagan.errorText(result)}`);
    poller.now();
  });

  const poller = sagan.poll(refreshJob, () => (missing || (job && !sagan.isActive(job)) ? null : 1000));
})();
