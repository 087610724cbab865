// What every page shares: one way to call the REST API, images, formatting, polling.
"use strict";

const sagan = (() => {
  // The API token the user entered, kept in this browser only; sent as a Bearer header with every API
  // request. The pages themselves are open (they hold no data); the REST API answers 401 without it.
  const TOKEN_KEY = "sagan-token";
  const token = () => localStorage.getItem(TOKEN_KEY) || "";
  const authHeaders = () => (token() ? {Authorization: `Bearer ${token()}`} : {});

  // A 401 shows the "enter a token" notice until a request gets through.
  function authNeeded(needed) {
    const box = document.getElementById("auth-notice");
    if (box) box.hidden = !needed;
  }

  document.addEventListener("DOMContentLoaded", () => {
    const form = document.getElementById("token-form");
    if (!form) return;
    const input = document.getElementById("token");  // no name: it is not one of a page form's fields
    input.value = token();
    form.addEventListener("submit", (event) => {
      event.preventDefault();
      const value = input.value.trim();
      if (value) localStorage.setItem(TOKEN_KEY, value); else localStorage.removeItem(TOKEN_KEY);
      location.reload();  // every script starts again with the token
    });
  });

  // Every page talks to the public REST API only, as curl would. Returns {status, ok, data}.
  async function api(path, {method = "GET", body, headers = {}} = {}) {
    const init = {method, headers: {Accept: "application/json", ...authHeaders(), ...headers}};
    if (body !== undefined) {
      init.headers["Content-Type"] = "application/json";
      init.body = JSON.stringify(body);
    }
    const response = await fetch(path, init);
    authNeeded(response.status === 401);
    const text = await response.text();
    let data = null;
    try { data = text ? JSON.parse(text) : null; } catch { data = {detail: text}; }
    return {status: response.status, ok: response.ok, data};
  }

  // A readable message from an error body: FastAPI's detail is a string or a list of {loc, msg}.
  function errorText(result) {
    if (result.status === 401) return "this service needs an API token: enter it in the Token field at the top right";
    const detail = result.data && result.data.detail;
    if (Array.isArray(detail)) return detail.map((d) => `${(d.loc || []).slice(1).join(".")}: ${d.msg}`).join("; ");
    return detail ? String(detail) : `HTTP ${result.status}`;
  }

  // Images from the API are fetched like the JSON (the same request, the same headers) and shown as
  // blobs; presigned storage links (another origin) go straight into the img. `key` names what is shown
  // (a URL like .../samples/latest shows new grids over time). Returns true once shown.
  const blobs = new WeakMap();
  async function showImage(img, url, key = url) {
    if (img.dataset.key === key) return true;
    img.dataset.wanted = key;  // a slider moved fast: only the last request's image is shown
    const sameOrigin = new URL(url, location.href).origin === location.origin;
    let src = url;
    if (sameOrigin) {
      const response = await fetch(url, {headers: authHeaders()});
      if (!response.ok || img.dataset.wanted !== key) return false;
      src = URL.createObjectURL(await response.blob());
      if (img.dataset.wanted !== key) {
        URL.revokeObjectURL(src);
        return false;
      }
      if (blobs.has(img)) URL.revokeObjectURL(blobs.get(img));
      blobs.set(img, src);
    }
    img.src = src;
    img.dataset.key = key;
    return true;
  }

  // A 422's loc names the field at fault: its message goes beside the element whose data-error-for is
  // that loc without "body" (e.g. "config.steps"); anything not placed goes to `fallback`.
  function clearErrors(form) {
    for (const element of form.querySelectorAll("[data-error-for]")) element.textContent = "";
    for (const element of form.querySelectorAll(".invalid")) element.classList.remove("invalid");
  }

  // The element for a loc without "body": the whole path, else without the job kind that the request
  // body's union puts first ("eval.n" → "n") or a list index at its end ("eval.metrics.0" → "metrics").
  function errorTarget(form, path) {
    const untagged = path.slice(1);
    const candidates = [path, untagged, ...[path, untagged].map((p) => (/^\d+$/.test(p[p.length - 1]) ? p.slice(0, -1) : p))];
    for (const candidate of candidates) {
      const where = candidate.join(".");
      const target = where && form.querySelector(`[data-error-for="${CSS.escape(where)}"]`);
      if (target) return target;
    }
    return null;
  }

  function showErrors(form, result, fallback) {
    const detail = Array.isArray(result.data && result.data.detail) ? result.data.detail : [];
    const placed = [];
    for (const error of detail) {
      const target = errorTarget(form, (error.loc || []).slice(1));
      if (!target) continue;
      const field = error.loc[error.loc.length - 1];  // beside the field, "steps: ..." need not name it
      target.textContent = error.msg.startsWith(`${field}: `) ? error.msg.slice(field.length + 2) : error.msg;
      target.closest("label")?.classList.add("invalid");
      placed.push(target);
    }
    if (placed.length === 0) fallback.textContent = errorText(result);
    return placed;
  }

  function escape(value) {
    return String(value).replace(/[&<>"']/g, (c) => ({"&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;"})[c]);
  }

  function age(iso) {
    if (!iso) return "";
    const seconds = Math.max(0, (Date.now() - Date.parse(iso)) / 1000);
    if (seconds < 60) return `${Math.floor(seconds)} s ago`;
    if (seconds < 3600) return `${Math.floor(seconds / 60)} min ago`;
    if (seconds < 86400) return `${Math.floor(seconds / 3600)} h ago`;
    return `${Math.floor(seconds / 86400)} d ago`;
  }

  function duration(seconds) {
    if (seconds == null || !isFinite(seconds)) return "";
    if (seconds < 90) return `${Math.round(seconds)} s`;
    if (seconds < 5400) return `${Math.round(seconds / 60)} min`;
    return `${(seconds / 3600).toFixed(1)} h`;
  }

  function number(value, digits = 4) {
    if (value == null) return "";
    if (typeof value !== "number") return String(value);
    if (Number.isInteger(value)) return value.toLocaleString("en-US");
    return Math.abs(value) >= 1000 || Math.abs(value) < 1e-3 ? value.toExponential(2) : value.toPrecision(digits);
  }

  // A size in bytes as "1.2 MB" (powers of 1000, as disks and stores count).
  function bytes(count) {
    if (count == null) return "";
    const units = ["B", "KB", "MB", "GB", "TB"];
    let value = count, unit = 0;
    while (value >= 1000 && unit < units.length - 1) { value /= 1000; unit += 1; }
    return `${value.toFixed(unit && value < 10 ? 1 : 0)} ${units[unit]}`;
  }

  // An evaluation record ({step, metrics: {swd: ..}}) as "swd 81.1 @ 1,000"; FID/KID/SWD lower is better.
  function evalText(record) {
    if (!record || !record.metrics) return "";
    const shown = Object.entries(record.metrics).filter(([, value]) => typeof value === "number").slice(0, 2);
    const numbers = shown.map(([name, value]) => `${escape(name)} ${number(value, 4)}`).join(", ");
    return record.step == null ? numbers : `${numbers} @ ${number(record.step)}`;
  }

  const ACTIVE = new Set(["queued", "running"]);
  const isActive = (job) => ACTIVE.has(job.status);

  // Progress of a job as {fraction, text}; the bar class tells running, done and stopped apart.
  function progress(job) {
    const {step, total_steps: total} = job.progress;
    const fraction = total ? Math.min(1, step / total) : (job.status === "succeeded" ? 1 : 0);
    const speed = job.metrics && job.metrics.img_per_s;
    let text = total ? `${number(step)} / ${number(total)}` : (step ? `step ${number(step)}` : "");
    if (speed && job.status === "running") text += ` · ${number(speed, 3)} img/s`;
    const state = job.status === "succeeded" ? "done" : (isActive(job) ? "" : "stopped");
    return {fraction, text, state};
  }

  function setBar(bar, job) {
    const {fraction, state} = progress(job);
    bar.className = `bar ${bar.classList.contains("big") ? "big" : ""} ${state}`;
    bar.firstElementChild.style.width = `${(fraction * 100).toFixed(1)}%`;
  }

  function setStatus(element, job) {
    const label = job.cancel_requested && isActive(job) ? `${job.status} (cancelling)` : job.status;
    element.textContent = label;
    element.className = `badge status-${job.status}`;
  }

  function notice(message) {
    const box = document.getElementById("notice");
    box.textContent = message || "";
    box.hidden = !message;
  }

  // A job's checkpoints as a <select>'s options, newest first (after `first`, e.g. "the best"). On its first
  // option it stays on the first as checkpoints arrive, as the step slider stays on the newest grid; on
  // another, it keeps that one while it exists.
  function fillCheckpoints(select, items, first = "") {
    const picked = select.selectedIndex > 0 ? select.value : null;
    select.innerHTML = first + items.slice().reverse().map((item) =>
      `<option value="${item.step}">step ${number(item.step)}</option>`).join("");
    if (picked && [...select.options].some((option) => option.value === picked)) select.value = picked;
  }

  // Calls fn, then again after interval() ms (null: stop); a failed call is noticed and retried.
  // now() runs it at once (after the call in flight, if any).
  function poll(fn, interval) {
    let timer = null, running = false, again = false;
    async function tick() {
      if (running) { again = true; return; }
      running = true;
      clearTimeout(timer);
      try {
        await fn();
        notice("");
      } catch (error) {
        notice(`Cannot reach the API (${error.message}); retrying.`);
      }
      running = false;
      if (again) { again = false; tick(); return; }
      const next = interval();
      if (next != null) timer = setTimeout(tick, next);
    }
    tick();
    return {now: tick};
  }

  return {api, authHeaders, bytes, errorText, clearErrors, showErrors, showImage, escape, evalText, age, duration, number, isActive, progress, setBar, setStatus, notice, poll, fillCheckpoints};
})();
