"""Models: each registered model's manifest and card, and the checksum check (``verify``).

Torch-free (``segnode.pipeline.model.catalog``): the node's process shows and verifies
models without loading them; loading stays in the workers and ``segnode models verify --load``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from sqlalchemy.orm import Session, sessionmaker

from segnode.config.settings import Settings
from segnode.node.admin.actors import Actor
from segnode.node.admin.errors import NotFoundError
from segnode.pipeline.model.catalog import node_catalog
from segnode.pipeline.model.errors import ModelError, ModelNotFoundError
from segnode.storage.audit import record_audit

CARD_FILE = "MODEL_CARD.md"
_CARD_LIMIT = 64 * 1024


@dataclass(frozen=True)
class ModelView:
    id: str
    name: str
    version: str
    in_use: bool
    manifest: dict[str, Any]
    card: str | None
    """The model card (Markdown), if the folder has one."""
    problem: str | None = None
    """Why the manifest cannot be read (a broken model is shown, never skipped)."""


@dataclass(frozen=True, slots=True)
class VerifyResult:
    id: str
    ok: bool
    detail: str


def models(settings: Settings) -> list[ModelView]:
    catalog = node_catalog(settings.storage.data_dir)
    in_use = {settings.model.default, *settings.model.ensemble}
    views = []
    for model_id in catalog.ids():
        try:
            manifest = catalog.get(model_id)
        except ModelError as exc:
            views.append(ModelView(model_id, model_id, "?", model_id in in_use, {}, None, str(exc)))
            continue
        card_path = catalog.folder(model_id) / CARD_FILE
        card = card_path.read_text(errors="replace")[:_CARD_LIMIT] if card_path.is_file() else None
        views.append(
            ModelView(
                model_id,
                manifest.name,
                manifest.version,
                model_id in in_use,
                manifest.model_dump(mode="json"),
                card,
            )
        )
    return views


def verify(settings: Settings, sessions: sessionmaker[Session], actor: Actor, model_id: str) -> VerifyResult:
    """The weights file against the manifest's sha256 (any role may check; it is audited)."""
    catalog = node_catalog(settings.storage.data_dir)
    try:
        result = VerifyResult(model_id, True, f"sha256 {catalog.verify(model_id)} matches the manifest")
    except ModelNotFoundError as exc:
        raise NotFoundError(str(exc)) from exc
    except ModelError as exc:
        result = VerifyResult(model_id, False, str(exc))
    with sessions.begin() as session:
        record_audit(
            session, actor.name, "model.verify", model_id, ok=result.ok, client=actor.client,
            detail={"detail": result.detail[:300]},
        )
    return result
