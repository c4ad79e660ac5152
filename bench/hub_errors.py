"""Hub failures as one line a user can act on: :class:`HubError` and :func:`hub_errors`.

Wrap any code that talks to the hub (``snapshot_download``, ``HfApi``, ``from_pretrained``,
``load_dataset``) in ``with hub_errors(item, profile):``; a failure anywhere in the exception's cause
chain becomes one :class:`HubError` (no traceback):

- a gated repo (``GatedRepoError``, HTTP 401/403) names its licence page, ``HF_TOKEN`` and what the
  token state is;
- a missing repo or a pinned revision that does not exist says so;
- an item missing from the cache in offline mode (or with no network) names itself, ``HF_HOME`` and
  ``make fetch PROFILE=<profile>``.

Anything else passes through unchanged. ``huggingface_hub`` is imported only inside
:func:`translate`, when there is a failure to translate.
"""

from __future__ import annotations

import contextlib
import os
from typing import Iterator

from bench.hub_cache import Item, hf_home, is_offline


class HubError(RuntimeError):
    """A hub item cannot be resolved or downloaded; the message says which and what to do."""


def _token_state() -> str:
    if os.environ.get("HF_TOKEN") or os.environ.get("HUGGING_FACE_HUB_TOKEN"):
        return "HF_TOKEN is set, but its account has no access yet (access requests can take a while to be granted) or the token lacks read scope"
    if (hf_home() / "token").exists():
        return f"a stored login token ({hf_home() / 'token'}) is used, but its account has no access yet or the token lacks read scope"
    return "no token found (HF_TOKEN is unset and there is no stored login)"


def _page(repo_id: str, repo_type: str) -> str:
    return f"https://huggingface.co/{'datasets/' if repo_type == 'dataset' else ''}{repo_id}"


def _chain(e: BaseException) -> Iterator[BaseException]:
    seen = set()
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        yield e
        e = e.__cause__ or e.__context__


def _status(e: BaseException) -> int | None:
    resp = getattr(e, "response", None)
    code = getattr(resp, "status_code", None)
    return code if isinstance(code, int) else None


def not_in_cache_message(what: str, profile: str | None) -> str:
    p = profile or os.environ.get("PROFILE") or "<profile>"
    return (f"{what} is not in the cache (HF_HOME={hf_home()}); run `make fetch PROFILE={p}` on a machine "
            "with internet (e.g. the login node), with the same HF_HOME")


def translate(e: BaseException, item: Item | None = None, profile: str | None = None) -> str | None:
    """One-line message for a hub failure anywhere in ``e``'s cause chain; None if it is not one."""
    from huggingface_hub.errors import (
        GatedRepoError,
        HfHubHTTPError,
        LocalEntryNotFoundError,
        OfflineModeIsEnabled,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    chain = list(_chain(e))
    repo_id = item.repo_id if item else next((getattr(x, "repo_id", None) for x in chain if getattr(x, "repo_id", None)), None)
    repo_type = item.repo_type if item and not item.is_local else next(
        (getattr(x, "repo_type", None) for x in chain if getattr(x, "repo_type", None)), None) or "model"
    kind = item.kind if item else repo_type
    name = f"{kind} {repo_id}" if repo_id else "a hub repository"
    what = f"{kind} {repo_id}@{item.revision}" if item and item.revision else name
    p = profile or os.environ.get("PROFILE") or "<profile>"
    login = f"set HF_TOKEN (or run `hf auth login`), then run `make fetch PROFILE={p}`"

    def gated(code: int | None) -> str:
        return (f"{name} is gated: accept its licence at {_page(repo_id or '<id>', repo_type)} and {login} "
                f"({'HTTP ' + str(code) + '; ' if code else ''}{_token_state()})")

    for x in chain:
        if isinstance(x, GatedRepoError):
            return gated(_status(x))
        if isinstance(x, RevisionNotFoundError):
            rev = item.revision if item else "?"
            return (f"{name}: the pinned revision '{rev}' does not exist on the hub (check the profile's "
                    f"revision or the registry pin in bench/data/)")
        if isinstance(x, RepositoryNotFoundError):
            return (f"{name} was not found on the hub, or it is private: check the id in the profile; for a "
                    f"private or gated repo {login} ({_token_state()})")
        if isinstance(x, HfHubHTTPError) and _status(x) in (401, 403):
            return gated(_status(x))
        if isinstance(x, (LocalEntryNotFoundError, OfflineModeIsEnabled)):
            if is_offline() or isinstance(x, OfflineModeIsEnabled):
                return not_in_cache_message(what, profile)
            return (f"{what}: the hub cannot be reached and it is not in the cache (HF_HOME={hf_home()}); "
                    f"on a compute node without internet run `make fetch PROFILE={p}` on the login node first")
    if is_offline():
        # datasets in offline mode: "Couldn't reach '<id>' on the Hub" / "is not cached"
        for x in chain:
            if isinstance(x, (ConnectionError, FileNotFoundError)) and item is not None:
                return not_in_cache_message(what, profile)
    for x in chain:
        mod = type(x).__module__ or ""
        if isinstance(x, ConnectionError) or mod.startswith(("httpx", "requests", "urllib3")) and "Connect" in type(x).__name__:
            return (f"{what}: cannot reach the hub ({type(x).__name__}); on a machine without internet run "
                    f"`make fetch PROFILE={p}` where there is internet, then work offline (HF_HUB_OFFLINE=1)")
    return None


@contextlib.contextmanager
def hub_errors(item: Item | None = None, profile: str | None = None) -> Iterator[None]:
    """Turn hub failures inside the block into one :class:`HubError` (no traceback: ``from None``).
    Other exceptions pass through unchanged."""
    try:
        yield
    except HubError:
        raise
    except Exception as e:  # noqa: BLE001 - only hub failures are translated, the rest is re-raised
        msg = translate(e, item, profile)
        if msg is None:
            raise
        raise HubError(msg) from None
