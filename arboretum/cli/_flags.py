"""Turn ``agents create`` / ``agents update`` flags into the store's attrs."""

from __future__ import annotations

import copy
import json
import tomllib
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from .._core._exceptions import ValidationError

__all__ = ["agent_changes", "read_agent_file"]


def read_agent_file(path: Path) -> dict[str, Any]:
    """Read ``--from-file``: JSON, or TOML (``.toml``), whose top-level keys are fields.

    Raises:
        ValidationError: ``{"--from-file": [...]}`` when it cannot be read or parsed.
    """
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ValidationError({"--from-file": [f"cannot read {path}: {exc}"]}) from exc
    try:
        if path.suffix.lower() == ".toml":
            data: Any = tomllib.loads(text)
        else:
            data = json.loads(text)
    except (ValueError, RecursionError) as exc:
        kind = "TOML" if path.suffix.lower() == ".toml" else "JSON"
        raise ValidationError({"--from-file": [f"{path} is not valid {kind}: {exc}"]}) from exc
    if not isinstance(data, dict):
        raise ValidationError({"--from-file": [f"{path} must hold an object of agent fields"]})
    return data


def _pairs(flag: str, values: Sequence[str], errors: dict[str, list[str]]) -> list[tuple[str, str]]:
    pairs = []
    for value in values:
        key, sep, rest = value.partition("=")
        key = key.strip()
        if not sep or not key:
            example = "KEY=ABILITY[,ABILITY...]" if flag == "--responsibility" else "KEY=CRON"
            errors.setdefault(flag, []).append(f"expected {example}, got {value!r}")
            continue
        pairs.append((key, rest.strip()))
    return pairs


def agent_changes(
    *,
    current: Mapping[str, Any] | None,
    from_file: Path | None = None,
    name: str | None = None,
    status: str | None = None,
    abilities: Sequence[str] | None = None,
    responsibilities: Sequence[str] = (),
    schedules: Sequence[str] = (),
) -> dict[str, Any]:
    """The attrs (create, ``current is None``) or changes (update) the flags ask for.

    ``--responsibility KEY=A,B`` sets that responsibility's abilities (an existing one keeps
    its schedule and payload); ``--schedule KEY=CRON`` sets its schedule (``KEY=`` clears it).
    Abilities a responsibility uses are added to the agent's ``abilities`` unless
    ``--ability`` gave the list explicitly.

    Raises:
        ValidationError: a flag is malformed (keyed by the flag, e.g. ``"--schedule"``).
    """
    errors: dict[str, list[str]] = {}
    changes: dict[str, Any] = read_agent_file(from_file) if from_file is not None else {}
    if name is not None:
        changes["name"] = name
    if status is not None:
        changes["status"] = status
    if abilities:
        changes["abilities"] = list(abilities)
    resp_pairs = _pairs("--responsibility", responsibilities, errors)
    sched_pairs = _pairs("--schedule", schedules, errors)
    if resp_pairs or sched_pairs:
        base = changes.get("responsibilities")
        if not isinstance(base, dict):
            base = (current or {}).get("responsibilities") or {}
        resps: dict[str, Any] = copy.deepcopy(dict(base))
        for key, listed in resp_pairs:
            names = [a.strip() for a in listed.split(",") if a.strip()]
            if not names:
                errors.setdefault("--responsibility", []).append(
                    f"{key}: name at least one ability"
                )
                continue
            entry = resps.get(key)
            entry = dict(entry) if isinstance(entry, dict) else {}
            entry["abilities"] = names
            resps[key] = entry
        for key, cron in sched_pairs:
            entry = resps.get(key)
            if not isinstance(entry, dict):
                errors.setdefault("--schedule", []).append(
                    f"{key}: no such responsibility; add it with --responsibility {key}=ABILITY"
                )
                continue
            entry["schedule"] = cron or None
        changes["responsibilities"] = resps
        if not abilities and "abilities" not in changes:
            have = list((current or {}).get("abilities") or [])
            for entry in resps.values():
                for ability in entry.get("abilities", []) if isinstance(entry, dict) else []:
                    if isinstance(ability, str) and ability not in have:
                        have.append(ability)
            if current is None or have != list(current.get("abilities") or []):
                changes["abilities"] = have
    if errors:
        raise ValidationError(errors)
    return changes
