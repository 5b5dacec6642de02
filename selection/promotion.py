"""Champion promotion in the MLflow model registry: aliases, not stages.

After a ranking, the best checkpoint's model version gets the alias ``champion`` and the
second best ``challenger`` (``set_registered_model_alias``; an alias moves, so the previous
holder loses it). Each chosen version is tagged with why (``promotion_reason``,
``promotion_rule``, ``promotion_score``, ``promoted_at``, ``promotion_run_id``), and the
registered model keeps the last decision in its ``champion_reason`` tag, so the registry alone
answers "why is this one on the robot?".

A checkpoint is matched to its model version by the ranking's ``model_version`` column
(``name/version``), else by the ``checkpoint_dir`` tag that training writes on every version
it registers. Checkpoints without a model version cannot be promoted: they are skipped with
a warning naming them, and the next one down takes the slot.
"""

from __future__ import annotations

import datetime as _dt
import os
from dataclasses import dataclass, field
from typing import Any

import pandas as pd

CHAMPION = "champion"
CHALLENGER = "challenger"


class PromotionError(RuntimeError):
    """Nothing could be promoted (no ranked checkpoint has a model version)."""


@dataclass
class Promotion:
    alias: str
    name: str
    version: str
    checkpoint: str
    score: float
    reason: str


@dataclass
class PromotionResult:
    promotions: list[Promotion] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    previous: dict[str, str] = field(default_factory=dict)  # alias -> "name/version" before

    def by_alias(self, alias: str) -> Promotion | None:
        return next((p for p in self.promotions if p.alias == alias), None)


def _split(mv: str) -> tuple[str, str] | None:
    if not isinstance(mv, str) or "/" not in mv:
        return None
    name, _, version = mv.rpartition("/")
    return (name, version) if name and version.isdigit() else None


def find_model_version(client: Any, checkpoint_dir: str | os.PathLike[str]) -> str | None:
    """``name/version`` of the newest registered version whose ``checkpoint_dir`` tag is this directory."""
    from policies.tracking import find_model_version as find

    mv = find(client, checkpoint_dir)
    return f"{mv.name}/{mv.version}" if mv is not None else None


def _current(client: Any, name: str, alias: str) -> str | None:
    try:
        v = client.get_model_version_by_alias(name, alias)
    except Exception:  # noqa: BLE001 - no such alias yet
        return None
    return f"{v.name}/{v.version}"


def promote(
    ranking: pd.DataFrame, client: Any, *, rule: str, rule_reason: str = "", run_id: str = "", dry_run: bool = False
) -> PromotionResult:
    """Set ``champion`` / ``challenger`` on the two best ranked checkpoints with a model version."""
    result = PromotionResult()
    ranked = ranking[ranking["rank"].notna()].sort_values("rank")
    chosen: list[tuple[pd.Series, tuple[str, str]]] = []
    for _, row in ranked.iterrows():
        mv = _split(str(row.get("model_version") or ""))
        if mv is None and row.get("path"):
            found = find_model_version(client, row["path"])
            mv = _split(found) if found else None
        if mv is None:
            result.warnings.append(
                f"checkpoint {row['checkpoint']!r} (rank {int(row['rank'])}) has no registered "
                f"model version and cannot be promoted; register it (training does) or rank "
                f"models:/NAME/VERSION"
            )
            continue
        chosen.append((row, mv))
        if len(chosen) == 2:
            break
    if not chosen:
        raise PromotionError(
            "no ranked checkpoint has a registered model version: nothing to promote"
            + ("; " + "; ".join(result.warnings) if result.warnings else "")
        )
    now = _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds")
    names = {mv[0] for _, mv in chosen}
    if len(names) > 1:
        result.warnings.append(
            f"champion and challenger belong to different registered models {sorted(names)}: "
            f"each alias is set in its own model"
        )
    for alias, (row, (name, version)) in zip((CHAMPION, CHALLENGER), chosen):
        prev = _current(client, name, alias)
        if prev is not None:
            result.previous[alias] = prev
        score = float(row["score"])
        reason = (
            f"{alias} by rule {rule!r}: rank {int(row['rank'])} of {len(ranked)}, score {score:.3f} "
            f"(sim perturbed {float(row['sim_perturbed']):.2f}, sim nominal {float(row['sim_nominal']):.2f}, "
            f"OOD {float(row['ood']):.2f})"
        )
        if rule_reason:
            reason += f"; rule {rule_reason}"
        result.promotions.append(Promotion(alias, name, version, str(row["checkpoint"]), score, reason))
        if dry_run:
            continue
        client.set_registered_model_alias(name, alias, version)
        for k, v in {
            "promotion_reason": reason,
            "promotion_rule": rule,
            "promotion_score": f"{score:.6f}",
            "promoted_at": now,
            "promotion_alias": alias,
            "promotion_run_id": run_id,
        }.items():
            client.set_model_version_tag(name, version, k, v)
        if alias == CHAMPION:
            client.set_registered_model_tag(name, "champion_reason", reason)
    return result


__all__ = ["CHAMPION", "CHALLENGER", "Promotion", "PromotionResult", "PromotionError", "promote", "find_model_version"]
