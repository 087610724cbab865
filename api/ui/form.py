"""The submit form's fields, read from the published OpenAPI schema of `POST /jobs` (TrainJobCreate.config):
whatever TrainConfig gains shows up in the form, with its type, default and help, and nothing else."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

# Shown first: what picks the run, then what people change most (the rest is folded away).
FIRST = ("preset", "dataset")
COMMON = ("steps", "batch_size", "imsize", "loss", "g_lr", "d_lr", "n_critic", "ema_decay", "seed",
          "sample_every", "checkpoint_every", "log_every", "device", "nproc")


@dataclass(frozen=True)
class FormField:
    name: str
    label: str
    help: str
    # How the page reads the input back into JSON: integer | number | string | boolean | list | choice.
    type: str
    nullable: bool
    default: Any
    choices: tuple[Any, ...] = ()


@dataclass(frozen=True)
class TrainForm:
    first: list[FormField]
    common: list[FormField]
    rest: list[FormField]


def train_form(openapi: dict[str, Any]) -> TrainForm:
    schema = openapi["components"]["schemas"]["TrainJobCreate"]["properties"]["config"]
    fields = {name: _field(name, prop) for name, prop in schema["properties"].items()}
    return TrainForm(first=[fields[name] for name in FIRST if name in fields],
                     common=[fields[name] for name in COMMON if name in fields],
                     rest=[field for name, field in fields.items() if name not in FIRST + COMMON])


def _field(name: str, prop: dict[str, Any]) -> FormField:
    variants = prop.get("anyOf", [prop])
    nullable = any(variant.get("type") == "null" for variant in variants)
    value = next(variant for variant in variants if variant.get("type") != "null")
    if "enum" in value:
        kind, choices = "choice", tuple(value["enum"])
    else:
        kind, choices = {"array": "list"}.get(value["type"], value["type"]), ()
    return FormField(name=name, label=prop.get("title", name),
                     help=" ".join(prop.get("description", "").split()),
                     type=kind, nullable=nullable, default=prop.get("default"), choices=choices)
