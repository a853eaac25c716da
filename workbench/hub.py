"""Is a model/dataset hub reachable? Decided in a few seconds, so offline users get a
clear error at once instead of minutes of retries inside huggingface_hub."""

from __future__ import annotations

import os
import socket
from functools import lru_cache
from urllib.parse import urlparse


class HubUnreachableError(ConnectionError):
    """Raised when something needs the Hugging Face hub and it cannot be reached."""


def _truthy(value: str | None) -> bool:
    return (value or "").strip().lower() in ("1", "true", "yes", "on")


@lru_cache(maxsize=4)
def _can_connect(host: str, port: int, timeout: float) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def hub_reachable(timeout: float = 3.0) -> bool:
    """True unless HF_HUB_OFFLINE/HF_DATASETS_OFFLINE is set or the hub's host can't be reached."""
    if _truthy(os.environ.get("HF_HUB_OFFLINE")) or _truthy(os.environ.get("HF_DATASETS_OFFLINE")):
        return False
    endpoint = os.environ.get("HF_ENDPOINT", "https://huggingface.co")
    url = urlparse(endpoint)
    port = url.port or (443 if url.scheme == "https" else 80)
    return _can_connect(url.hostname or "huggingface.co", port, timeout)


def require_hub(what: str, hint: str = "") -> None:
    """Raise HubUnreachableError naming `what` if the hub cannot be reached."""
    if not hub_reachable():
        msg = f"{what} needs the Hugging Face hub, which is not reachable from this machine (offline)."
        if hint:
            msg += " " + hint
        raise HubUnreachableError(msg)
