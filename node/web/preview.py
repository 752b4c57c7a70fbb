"""A done job's result preview, as the write step left it in ``<job>/preview/``.

The images are rendered by the pipeline (``segnode.pipeline.outputs.preview``) while it has
the volumes; the web only reads ``preview.json`` and serves the PNGs it lists, so no
request can name another file.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from segnode.node.admin.errors import NotFoundError
from segnode.node.web.context import WebContext

PREVIEW_DIR = "preview"
PREVIEW_INDEX = "preview.json"


def preview_index(ctx: WebContext, job_id: int) -> dict[str, Any]:
    """The job's ``preview.json``, or an empty preview (``available`` false) before the write step."""
    path = ctx.job_folder(job_id) / PREVIEW_DIR / PREVIEW_INDEX
    if not path.is_file():
        return {"available": False, "images": []}
    try:
        index: dict[str, Any] = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        return {"available": False, "images": [], "problem": f"unreadable preview: {exc}"}
    return {"available": True, **index}


def preview_file(ctx: WebContext, job_id: int, name: str) -> Path:
    listed = {str(image.get("file")) for image in preview_index(ctx, job_id).get("images", [])}
    if name not in listed:
        raise NotFoundError(f"job {job_id} has no preview image {name!r}")
    path = ctx.job_folder(job_id) / PREVIEW_DIR / name
    if not path.is_file():
        raise NotFoundError(f"job {job_id}: preview image {name!r} is gone")
    return path
