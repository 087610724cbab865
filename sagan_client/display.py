"""Jobs and data sets as text for a terminal: a progress line, a table, a list of facts."""

from __future__ import annotations

from typing import Any


def number(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def duration(seconds: float) -> str:
    seconds = round(seconds)
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{hours}h{minutes:02d}m"
    return f"{minutes}m{secs:02d}s" if minutes else f"{secs}s"


def eval_text(record: dict[str, Any] | None) -> str | None:
    """`swd 0.0123 @ step 100`: an evaluation record's scores and the step it measured."""
    if not record or not record.get("metrics"):
        return None
    scores = " ".join(f"{name} {number(value)}" for name, value in record["metrics"].items()
                      if isinstance(value, int | float))
    step = record.get("step")
    return scores if step is None else f"{scores} @ step {step}"


def progress_text(job: dict[str, Any]) -> str:
    """`step 120/400 (30%)`, or '' before the first step is known."""
    step, total = job["progress"]["step"], job["progress"]["total_steps"]
    if total:
        return f"step {step}/{total} ({100 * step // total}%)"
    return f"step {step}" if step else ""


def eta_seconds(job: dict[str, Any]) -> float | None:
    """Time left of a running training at its latest speed: the images still to go over img/s."""
    speed = (job.get("metrics") or {}).get("img_per_s")
    total, batch = job["progress"]["total_steps"], job["spec"].get("batch_size")
    if job["status"] != "running" or not speed or not total or not isinstance(batch, int):
        return None
    seconds: float = max(0, total - job["progress"]["step"]) * batch / speed
    return seconds


def progress_line(job: dict[str, Any]) -> str:
    """One line of `sagan jobs wait`: status, step/total, img/s, ETA and the latest evaluation."""
    parts = [job["id"], job["status"], progress_text(job)]
    speed = (job.get("metrics") or {}).get("img_per_s")
    if speed and job["status"] == "running":
        parts.append(f"{number(speed)} img/s")
    eta = eta_seconds(job)
    if eta is not None:
        parts.append(f"ETA {duration(eta)}")
    latest = eval_text(job.get("latest_eval"))
    if latest:
        parts.append(f"eval {latest}")
    if job.get("error"):
        parts.append(f"error: {job['error']}")
    return "  ".join(part for part in parts if part)


def table(rows: list[list[str]], header: list[str]) -> str:
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header))]
    return "\n".join("  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip()
                     for row in [header, *rows])


def job_rows(jobs: list[dict[str, Any]]) -> str:
    return table([[job["id"], job["kind"], job["status"], progress_text(job), job["created_at"][:19]]
                  for job in jobs], ["ID", "KIND", "STATUS", "PROGRESS", "CREATED"])


def job_facts(job: dict[str, Any]) -> str:
    """`sagan jobs show`: what the job page's summary says, one fact a line."""
    speed = (job.get("metrics") or {}).get("img_per_s")
    facts: list[tuple[str, Any]] = [
        ("id", job["id"]), ("kind", job["kind"]), ("status", job["status"]),
                                    ("priority", job.get("priority")),
        ("progress", progress_text(job) or None),
        # A sweep's attempts are its children's.
        ("attempt", None if job["kind"] == "sweep" else f"{job['attempt']} of {job['max_attempts']}"),
        ("sweep", job.get("parent_id") and f"{job['parent_id']}, arm {job['arm']}"),
        ("speed", speed and f"{number(speed)} img/s"),
        ("latest evaluation", eval_text(job.get("latest_eval"))),
        ("best evaluation", eval_text(job.get("best_eval"))),
        ("latest checkpoint", job.get("latest_checkpoint_step")),
        ("created", job["created_at"]), ("started", job.get("started_at")),
        ("finished", job.get("finished_at")), ("error", job.get("error"))]
    facts += [("warning", warning) for warning in job.get("warnings") or []]
    lines = [f"{name + ':':<19}{number(value)}" for name, value in facts if value not in (None, "")]
    for child in job.get("children") or []:
        lines.append(f"  {child['arm']} seed {child['seed']}: {child['id']} {child['status']} "
                     f"{progress_text(child)} {eval_text(child.get('best_eval')) or ''}".rstrip())
    if job["status"] == "failed" and job.get("log_tail"):
        lines += ["log tail:", job["log_tail"].rstrip()]
    return "\n".join(lines)


def dataset_rows(datasets: list[dict[str, Any]]) -> str:
    return table([[d["id"], d["name"], d["status"], number(d.get("images") or ""), d["created_at"][:19]]
                  for d in datasets], ["ID", "NAME", "STATUS", "IMAGES", "CREATED"])


def dataset_facts(dataset: dict[str, Any]) -> str:
    facts = [("id", dataset["id"]), ("name", dataset["name"]), ("status", dataset["status"]),
             ("source", dataset["source"]), ("images", dataset.get("images")),
             ("classes", ", ".join(dataset.get("classes") or []) or None),
             ("image sizes", ", ".join(str(size) for size in dataset.get("imsizes") or []) or None),
             ("bytes", dataset.get("size_bytes")),
             ("unreadable images", len(dataset.get("bad_images") or {}) or None),
             ("build job", dataset.get("job_id")), ("error", dataset.get("error")),
             ("created", dataset["created_at"])]
    lines = [f"{name + ':':<19}{number(value)}" for name, value in facts if value is not None]
    lines += [f"  used by {job['id']} ({job['kind']}, {job['status']})" for job in dataset.get("jobs") or []]
    return "\n".join(lines)
