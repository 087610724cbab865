// The training form: fields come from the OpenAPI schema (rendered by the server), their starting values
// from GET /presets; POST /jobs gets the preset and only the fields that differ from it.
"use strict";

(() => {
  const form = document.getElementById("train-form");
  // (Not form.dataset: a form's properties include its fields by name, and one field is "dataset".)
  const defaults = JSON.parse(form.getAttribute("data-defaults"));
  const inputs = [...form.querySelectorAll("[name]")];
  const byName = new Map(inputs.map((input) => [input.name, input]));
  const edited = new Set();  // fields the user touched keep their value when the preset changes
  let presets = {}, idempotencyKey = null;

  const NUMBER = /^[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?$/;

  // The input's text as the JSON value the API gets; text that is not of the field's type goes as typed,
  // so the API's 422 names the field and says what it expected.
  function read(input) {
    const text = input.value.trim();
    switch (input.dataset.type) {
      case "boolean": return input.checked;
      case "choice": return JSON.parse(input.value);
      case "integer":
      case "number":
        if (text === "") return input.dataset.nullable === "true" ? null : undefined;
        return NUMBER.test(text) ? Number(text) : text;
      case "list":
        if (text === "" || text === "null") return null;
        if (text === "none" || text === "[]") return [];
        return text.split(",").map((part) => (NUMBER.test(part.trim()) ? Number(part.trim()) : part.trim()));
      default:
        return text === "" && input.dataset.nullable === "true" ? null : input.value;
    }
  }

  function write(input, value) {
    if (input.dataset.type === "boolean") input.checked = Boolean(value);
    else if (input.dataset.type === "choice") input.value = JSON.stringify(value ?? null);
    else if (input.dataset.type === "list") input.value = value == null ? "" : (value.length ? value.join(",") : "none");
    else input.value = value == null ? "" : String(value);
  }

  const presetName = () => read(byName.get("preset"));
  function presetValue(name) {
    const overrides = (presets[presetName()] || {}).overrides || {};
    return name in overrides ? overrides[name] : defaults[name];
  }
  const same = (a, b) => JSON.stringify(a) === JSON.stringify(b);

  function body() {
    const config = {preset: presetName()};
    for (const input of inputs) {
      const value = read(input);
      if (input.name !== "preset" && value !== undefined && !same(value, presetValue(input.name))) config[input.name] = value;
    }
    const study = document.getElementById("study").value;
    if (!study) return {kind: "train", config};
    const seeds = document.getElementById("seeds").value.split(",").filter((part) => part.trim()).map((part) => value(part));
    return {kind: "sweep", study, base: config, seeds};
  }
  const value = (text) => (NUMBER.test(text.trim()) ? Number(text) : text.trim());

  function refresh() {
    const request = body(), config = request.config || request.base;
    document.getElementById("seeds-field").hidden = request.kind !== "sweep";
    for (const input of inputs) input.closest(".field").classList.toggle("changed", input.name in config && input.name !== "preset");
    document.getElementById("request-body").textContent = JSON.stringify(body(), null, 2);
  }

  function applyPreset() {
    for (const input of inputs) if (input.name !== "preset" && !edited.has(input.name)) write(input, presetValue(input.name));
    refresh();
  }

  form.addEventListener("input", (event) => {
    if (event.target.name && event.target.name !== "preset") edited.add(event.target.name);
    refresh();
  });
  byName.get("preset").addEventListener("change", applyPreset);

  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    const error = document.getElementById("form-error");
    sagan.clearErrors(form);
    const button = form.querySelector("button[type=submit]");
    button.disabled = true;
    try {
      // One key per filled-in form: a double click or a retry after a lost answer makes one job.
      idempotencyKey ||= `${Date.now().toString(36)}-${Math.random().toString(36).slice(2)}`;
      const result = await sagan.api("/jobs", {method: "POST", body: body(), headers: {"Idempotency-Key": idempotencyKey}});
      if (result.ok) {
        location.href = `/ui/jobs/${encodeURIComponent(result.data.id)}`;
        return;
      }
      // A sweep's base fields are this form's config fields.
      for (const detail of Array.isArray(result.data && result.data.detail) ? result.data.detail : []) {
        if (detail.loc && detail.loc[1] === "base") {
          detail.loc[1] = "config";
          detail.msg = detail.msg.replace(/^base: /, "");
        }
      }
      const placed = sagan.showErrors(form, result, error);
      if (placed.length) {
        placed[0].closest("details")?.setAttribute("open", "");
        placed[0].closest("label").scrollIntoView({block: "center"});
        placed[0].closest("label").querySelector("input, select").focus();
      }
    } catch (failure) {
      error.textContent = `Cannot reach the API: ${failure.message}`;
    } finally {
      button.disabled = false;
    }
  });
  // The ready data sets of the service as suggestions for the dataset fields (any spec may still be typed).
  async function offerDatasets() {
    const result = await sagan.api("/datasets");
    const ready = result.ok ? (Array.isArray(result.data) ? result.data : result.data.items).filter((d) => d.status === "ready") : [];
    const list = document.createElement("datalist");
    list.id = "ready-datasets";
    for (const dataset of ready) list.append(new Option(`${dataset.name} (${dataset.imsizes.map((size) => `${size}px`).join(", ")})`, `ds:${dataset.id}`));
    form.append(list);
    for (const name of ["dataset", "eval_dataset"]) byName.get(name)?.setAttribute("list", list.id);
  }

  // Any change after an answer is a new request.
  form.addEventListener("input", () => { idempotencyKey = null; });

  (async () => {
    const studies = await sagan.api("/studies");
    for (const study of studies.ok ? studies.data.items : []) {
      document.getElementById("study").add(new Option(`${study.name}: ${study.arms.map((arm) => arm.name).join(", ")}`, study.name));
    }
    await offerDatasets();
    const result = await sagan.api("/presets");
    if (result.ok) presets = Object.fromEntries(result.data.items.map((preset) => [preset.name, preset]));
    else sagan.notice(`Could not load the presets: ${sagan.errorText(result)}`);
    const preset = new URLSearchParams(location.search).get("preset");
    if (preset && presets[preset]) write(byName.get("preset"), preset);
    applyPreset();
    document.body.dataset.loaded = "true";
  })();
})();
