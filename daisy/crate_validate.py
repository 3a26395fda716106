"""Validate a run's RO-Crate with roc-validator (``rocrate-validator``) without network: the
JSON-LD contexts it would fetch are shipped in ``daisy/crate_data/`` and served from a pre-filled
HTTP cache in the validator's offline mode."""

from __future__ import annotations

import os
from pathlib import Path

from .crate import CONTEXTS, DATA, VALIDATOR_PROFILE


def _serve_shipped(session) -> None:
    """Answer GETs of :data:`CONTEXTS` from ``daisy/crate_data`` (no network)."""
    import io

    from requests.adapters import HTTPAdapter
    from urllib3 import HTTPResponse

    class Shipped(HTTPAdapter):
        def send(self, request, **kwargs):
            body = (DATA / CONTEXTS[request.url]).read_bytes()
            raw = HTTPResponse(body=io.BytesIO(body), status=200, preload_content=False, decode_content=False,
                               headers={"Content-Type": "application/ld+json", "Content-Length": str(len(body))})
            return self.build_response(request, raw)

    for url in CONTEXTS:
        session.mount(url, Shipped())


def offline_cache(folder: str | os.PathLike) -> Path:
    """An HTTP cache (requests-cache, SQLite: roc-validator's format) holding the shipped JSON-LD
    contexts, for the validator's offline mode. Returns the cache path to give it."""
    from requests_cache import CachedSession

    path = Path(folder) / "http_cache"
    session = CachedSession(cache_name=str(path), backend="sqlite", expire_after=-1,
                            allowable_methods=("GET",), allowable_codes=(200,))
    try:
        _serve_shipped(session)
        for url in CONTEXTS:
            response = session.get(url)
            response.raise_for_status()
            response.json()
    finally:
        session.close()
    return path


def validate(crate_dir: str | os.PathLike, profile: str = VALIDATOR_PROFILE, severity: str = "REQUIRED",
             offline: bool = True) -> list[str]:
    """Validate the crate in ``crate_dir`` with roc-validator (``rocrate-validator``); returns the
    issues, one line each (empty: valid). ``offline``: no network, contexts from ``crate_data``."""
    import tempfile

    try:
        from rocrate_validator import services
        from rocrate_validator.models import ValidationSettings
    except ImportError:
        raise RuntimeError("roc-validator is not installed (pip install roc-validator)") from None
    with tempfile.TemporaryDirectory(prefix="daisy-crate-validate-") as scratch:
        settings = {"rocrate_uri": str(Path(crate_dir).resolve()), "profile_identifier": profile,
                    "requirement_severity": severity}
        if offline:
            settings.update(offline=True, cache_path=offline_cache(scratch))
        result = services.validate(ValidationSettings(**settings))
        issues = [f"{issue.severity.name} {issue.check.identifier} {issue.check.name}: {' '.join(str(issue.message).split())}"
                  f" [{getattr(issue, 'violatingEntity', None) or ''}]" for issue in result.get_issues()]
        if not result.passed() and not issues:
            issues = ["the validator reports the crate invalid without naming an issue"]
    return issues
