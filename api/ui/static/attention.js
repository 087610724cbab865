// The job page's attention panel: pick a checkpoint and an image, click a point of it, see every attention
// layer's map from that point (GET /jobs/{id}/attention). The first request for an image runs a helper
// process on the API host (seconds); every other point of the same image is answered from its stored maps.
"use strict";

(() => {
  const $ = (id) => document.getElementById(id);
  const jobId = $("job").dataset.jobId;
  const base = `/jobs/${encodeURIComponent(jobId)}`;
  const form = $("attention-form"), img = $("attention-img"), text = $("attention-text");
  let imsize = null, query = null, shown = null;

  // The job page fetches the checkpoints as the job moves (job.js) and hands them on: the panel shows once
  // there is one and the job's image size is known.
  let checkpoints = [];
  function showSteps() {
    if (imsize === null || checkpoints.length === 0) return;
    sagan.fillCheckpoints(form.elements.step, checkpoints);
    $("attention-section").hidden = false;
  }
  document.addEventListener("sagan:checkpoints", (event) => {
    checkpoints = event.detail;
    showSteps();
  });

  async function show() {
    const params = new URLSearchParams({step: form.elements.step.value, seed: form.elements.seed.value.trim(),
                                        index: form.elements.index.value.trim(), y: query[0], x: query[1]});
    const wanted = params.toString();
    shown = wanted;
    text.textContent = `query (${query[0]}, ${query[1]}): computing…`;
    const response = await fetch(`${base}/attention?${wanted}`, {headers: sagan.authHeaders()});
    if (shown !== wanted) return;  // a later click won
    if (!response.ok) {
      const body = await response.json().catch(() => ({}));
      text.textContent = `Could not compute the maps: ${sagan.errorText({status: response.status, data: body})}`;
      return;
    }
    if (img.src.startsWith("blob:")) URL.revokeObjectURL(img.src);
    img.src = URL.createObjectURL(await response.blob());
    img.hidden = false;  // hidden until its first maps: an image without a source shows a broken-image icon
    img.dataset.query = `${query[0]},${query[1]}`;
    text.textContent = `query (${query[0]}, ${query[1]}) · step ${sagan.number(Number(form.elements.step.value))}; click the image (left) for another point`;
  }

  form.addEventListener("submit", (event) => {
    event.preventDefault();
    query = query || [imsize >> 1, imsize >> 1];
    show();
  });
  // The figure's first panel is the image, scaled up as sagan_core.attention_maps.render_png does (to 128 px).
  img.addEventListener("click", (event) => {
    const scale = Math.max(1, Math.floor(128 / imsize));
    const box = img.getBoundingClientRect(), ratio = img.naturalWidth / box.width;
    const px = (event.clientX - box.left) * ratio, py = (event.clientY - box.top) * ratio;
    if (px >= imsize * scale || py >= imsize * scale) return;  // a map, not the image
    query = [Math.floor(py / scale), Math.floor(px / scale)];
    show();
  });

  (async () => {
    const result = await sagan.api(base);
    if (!result.ok || result.data.kind !== "train") return;
    imsize = result.data.spec.imsize;
    showSteps();
  })();
})();
