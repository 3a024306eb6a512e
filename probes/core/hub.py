"""Hugging Face hub ids when the hub may not answer: fail fast in one line, or read the local cache alone.

Without network, every hub lookup of ``from_pretrained`` retries for most of a minute before it
gives up. ``hub_reachable`` asks the hub once per process, bounded to ``HUB_PROBE_SECONDS`` (name
lookup included); when it does not answer, the process goes offline (``HF_HUB_OFFLINE``), so that
every later lookup reads the local cache at once, and ``check_hub_model`` refuses in one line a hub
id the cache lacks.
"""

from __future__ import annotations

import functools
import os
import threading
import urllib.error
import urllib.request

from huggingface_hub import constants as hub_constants
from huggingface_hub import try_to_load_from_cache

from probes.core.errors import ToolkitError

__all__ = ["HUB_PROBE_SECONDS", "check_hub_model", "hub_reachable"]

HUB_PROBE_SECONDS = 3.0  # how long the hub may take to answer before the process reads the local cache alone


def check_hub_model(name: str, alternatives: str) -> None:
    """Refuse hub id ``name`` when the hub does not answer (or offline mode is on) and the local cache lacks it.

    Args:
        name: the hub id.
        alternatives: the model names the caller also takes, for the error line.

    Raises:
        ToolkitError: one line saying why the model cannot be read and what to do.
    """
    if hub_reachable() or _is_cached(name):
        return
    why = (
        "HF_HUB_OFFLINE is set: unset it to download the model"
        if _hub_state() == "offline"
        else f"{hub_constants.ENDPOINT} cannot be reached: connect to the network (or set HF_ENDPOINT to a mirror)"
    )
    raise ToolkitError(f"model {name!r} is not in the local Hugging Face cache and {why}; or use {alternatives}")


def hub_reachable() -> bool:
    """Whether the Hugging Face hub answered (asked once per process; never in offline mode)."""
    return _hub_state() == "online"


@functools.cache
def _hub_state() -> str:
    """``offline`` (``HF_HUB_OFFLINE`` was set), ``online`` (the hub answered within ``HUB_PROBE_SECONDS``, even with an
    error status) or ``unreachable`` (it did not: this process goes offline from here on)."""
    if hub_constants.is_offline_mode():
        return "offline"
    done, answered = threading.Event(), []

    def probe() -> None:
        try:
            with urllib.request.urlopen(
                urllib.request.Request(hub_constants.ENDPOINT, method="HEAD"), timeout=HUB_PROBE_SECONDS
            ):
                answered.append(True)
        except urllib.error.HTTPError:
            answered.append(True)
        except (OSError, ValueError):
            pass
        finally:
            done.set()

    # a thread, so that a name lookup that hangs (no timeout covers it) is bounded too
    threading.Thread(target=probe, name="hub-probe", daemon=True).start()
    done.wait(HUB_PROBE_SECONDS)
    if answered:
        return "online"
    # huggingface_hub reads its offline switch at import: set it too, for the lookups of this process
    os.environ["HF_HUB_OFFLINE"] = "1"
    hub_constants.HF_HUB_OFFLINE = True
    return "unreachable"


def _is_cached(name: str) -> bool:
    """Whether the local cache holds hub id ``name``'s ``config.json``."""
    try:
        return isinstance(try_to_load_from_cache(name, "config.json"), str)
    except ValueError:  # an id the hub's rules refuse
        return False
