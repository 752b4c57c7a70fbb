"""OpenID Connect sign-in (placeholder router; filled in by the OIDC work)."""

from __future__ import annotations

from fastapi import APIRouter

router = APIRouter()
