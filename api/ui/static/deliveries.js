// The job page's webhook deliveries: GET /jobs/{id}/deliveries, polled while one is pending or the job is active.
"use strict";

(() => {
  const $ = (id) => document.getElementById(id);
  const jobId = $("job").dataset.jobId;
  const base = `/jobs/${encodeURIComponent(jobId)}`;
  const TERMINAL = new Set(["succeeded", "failed", "cancelled"]);
  const STATE_LOOKS = {delivered: "succeeded", pending: "running", failed: "failed"};  // the status badges' colours
  let done = false;

  function answerText(item) {
    const code = item.answer_code == null ? "" : `${item.answer_code} `;
    return `${code}${item.answer || ""}`;
  }

  function whenText(item) {
    if (item.state === "delivered") return `delivered ${sagan.age(item.delivered_at)}`;
    if (item.state === "pending") return item.attempts ? `retrying (next ${new Date(item.next_attempt_at).toLocaleTimeString()})` : "sending";
    return `given up ${sagan.age(item.answered_at)}`;
  }

  async function refresh() {
    const result = await sagan.api(`${base}/deliveries`);
    if (!result.ok) { done = result.status === 404; return; }
    const items = result.data.items;
    $("deliveries-section").hidden = !items.length;
    $("delivery-rows").innerHTML = items.map((item) => `<tr>
      <td>#${item.sequence} ${sagan.escape(item.status)}</td>
      <td><code>${sagan.escape(item.url)}</code></td>
      <td><span class="badge status-${STATE_LOOKS[item.state]}">${item.state}</span></td>
      <td>${item.attempts}</td>
      <td>${sagan.escape(answerText(item))}</td>
      <td class="muted">${sagan.escape(whenText(item))}</td></tr>`).join("");
    if (items.some((item) => item.state === "pending")) return;
    const last = items[items.length - 1];
    // Nothing pending: more may come only while the job is active (a job without notify URLs: never).
    if (last && TERMINAL.has(last.status)) { done = true; return; }
    const job = await sagan.api(base);
    done = !job.ok || (TERMINAL.has(job.data.status) && !items.length);
  }

  sagan.poll(refresh, () => (done ? null : 2000));
})();
