"""Upload an exported adapter to the Hugging Face Hub.

The token comes from the environment (HF_TOKEN) or the local `hf auth login`, is handed to
`HfApi` in memory only, and is never written, logged or printed. Callers check for it before
doing any work, so a missing login fails in a second, not after an export.
"""

from __future__ import annotations

from pathlib import Path

from huggingface_hub import HfApi, get_token

from mlx_plamo3.errors import PlamoError
from mlx_plamo3.io import OUTPUT_MARKER
from mlx_plamo3.loading import is_hub_id


class HubError(PlamoError, RuntimeError):
    """The Hub upload cannot go ahead (no token, malformed repo id) or failed."""


def check_repo_id(repo_id: str) -> str:
    if not is_hub_id(repo_id):
        raise HubError(f"--push-to-hub wants a repo id 'user/name', got {repo_id!r}")
    return repo_id


def hub_token() -> str:
    """The Hub token (HF_TOKEN, else the stored login); an error saying how to get one."""
    token = get_token()
    if not token:
        raise HubError(
            "no Hugging Face token: set HF_TOKEN in the environment or run `hf auth login`, "
            "then retry (the token is only read, never stored by mlx-plamo)"
        )
    return token


def push_folder(
    folder: str | Path,
    repo_id: str,
    token: str,
    private: bool = False,
    commit_message: str = "Upload PLaMo 3 tool-calling LoRA (mlx-plamo export)",
) -> str:
    """Create the model repo if needed and upload `folder`; returns the repo URL."""
    check_repo_id(repo_id)
    folder = Path(folder)
    if not folder.is_dir():
        raise HubError(f"{folder} is not a directory")
    api = HfApi(token=token)
    try:
        url = api.create_repo(repo_id, repo_type="model", private=private, exist_ok=True)
        api.upload_folder(
            folder_path=str(folder),
            repo_id=repo_id,
            repo_type="model",
            commit_message=commit_message,
            ignore_patterns=[OUTPUT_MARKER],
        )
    except Exception as exc:  # the Hub client raises many kinds; report them all the same way
        # str(exc) from huggingface_hub never contains the token.
        raise HubError(f"upload of {folder} to {repo_id} failed: {exc}") from exc
    return str(url)
