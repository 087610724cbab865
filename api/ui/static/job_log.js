// The job page's log pane: the latest attempt's log, followed as it grows (GET /jobs/{id}/logs?follow=true,
// read as a stream), or an earlier attempt's, chosen in the select.
"use strict";

(() => {
  const $ = (id) => document.getElementById(id);
  const base = `/jobs/${encodeURIComponent($("job").dataset.jobId)}`;
  const text = $("log-text"), state = $("log-state"), select = $("log-attempt");
  let reading = null;  // the AbortController of the request in flight

  // Keep the newest line in view, unless the reader scrolled up to read.
  function append(chunk) {
    const atBottom = text.scrollHeight - text.scrollTop - text.clientHeight < 24;
    text.textContent += chunk;
    if (atBottom) text.scrollTop = text.scrollHeight;
  }

  async function show(attempt) {
    if (reading) reading.abort();
    const controller = reading = new AbortController();
    const live = attempt === "live";
    text.textContent = "";
    state.textContent = live ? "Following the latest attempt…" : "Loading…";
    const query = live ? "follow=true" : `attempt=${encodeURIComponent(attempt)}`;
    try {
      const response = await fetch(`${base}/logs?${query}`, {headers: sagan.authHeaders(), signal: controller.signal});
      if (!response.ok) {
        state.textContent = `Could not load the log: HTTP ${response.status}`;
        return;
      }
      const reader = response.body.getReader(), decoder = new TextDecoder();
      for (;;) {
        const {done, value} = await reader.read();
        if (done) break;
        const chunk = decoder.decode(value, {stream: true});
        append(chunk);
        if (live) addAttempts(chunk);
      }
      append(decoder.decode());
      state.textContent = text.textContent ? (live ? "The job has ended." : "") : "No log.";
    } catch (error) {
      if (controller.signal.aborted) return;  // another attempt was chosen
      state.textContent = "The log stream broke off; following again shortly.";
      setTimeout(() => { if (reading === controller) show(select.value); }, 3000);
    }
  }

  // The select lists "latest (live)" and every attempt so far; a followed log announces a new attempt.
  function addAttempts(chunk) {
    const started = [...chunk.matchAll(/^--- attempt (\d+) ---$/gm)].map((match) => Number(match[1]));
    setAttempts(Math.max(select.options.length - 1, ...started));
  }

  function setAttempts(count) {
    for (let attempt = select.options.length; attempt <= count; attempt++) {
      select.add(new Option(`${attempt}`, `${attempt}`));
    }
  }

  select.addEventListener("change", () => show(select.value));

  async function start() {
    const result = await sagan.api(base);
    if (!result.ok || result.data.kind === "sweep") return;  // a sweep's children have the logs
    select.add(new Option("latest (live)", "live"));
    setAttempts(result.data.attempt);
    $("log-section").hidden = false;
    show("live");
  }

  start();
})();
