"""The docs name every route, config key, task state, reason and node state."""

from __future__ import annotations

import typing
from pathlib import Path

import pytest
from pydantic import BaseModel

from oaasd.config import Settings
from oaasd.http.openapi import OPERATIONS
from oaasd.service.cluster import NODE_STATES
from oaasd.states import CallbackState, PipelineReason, PipelineState, Reason, State, TuningReason, TuningState

REPO = Path(__file__).resolve().parent.parent
DOCS = "\n".join(p.read_text() for p in [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))])


def _model_of(annotation) -> tuple[type[BaseModel] | None, str]:
    """The config section a field holds (a model, or a list of them as ``[]``), else (None, "")."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation, ""
    args = typing.get_args(annotation)
    if typing.get_origin(annotation) is list and args and isinstance(args[0], type) and issubclass(args[0], BaseModel):
        return args[0], "[]"
    return None, ""


def config_keys(model: type[BaseModel] = Settings, prefix: str = "") -> list[str]:
    """Every leaf key of the settings, dotted: ``server.listen``, ``nodes[].host``."""
    out = []
    for name, field in model.model_fields.items():
        section, suffix = _model_of(field.annotation)
        if section is None:
            out.append(prefix + name)
        else:
            out += config_keys(section, f"{prefix}{name}{suffix}.")
    return out


def test_config_walk_reaches_nested_sections():
    keys = config_keys()
    assert {"server.listen", "ssh.keepalive_interval_s", "nodes[].host"} <= set(keys)


@pytest.mark.parametrize("route", [f"{op.method} {op.path}" for op in OPERATIONS])
def test_route_is_documented(route):
    assert route in DOCS


@pytest.mark.parametrize("key", config_keys())
def test_config_key_is_documented(key):
    assert f"`{key}`" in DOCS


@pytest.mark.parametrize("word", [w.value for enum in (State, Reason, TuningState, TuningReason, PipelineState,
                                                      PipelineReason, CallbackState) for w in enum]
                         + list(NODE_STATES))
def test_state_and_reason_are_documented(word):
    assert f"`{word}`" in DOCS
