"""``evolve --push-to-hub REPO``: the finished ``--format hf`` folder uploaded as a Hub dataset.

Through ``huggingface_hub`` (create the dataset repo if it is not there, then one commit of the
folder). The token is read from the environment (``HF_TOKEN``) when the push happens and handed to
the client only: never a flag, never written to the work folder, the card, MLflow or a log line.
``HF_ENDPOINT`` points the client at another Hub (a mirror, an enterprise Hub, a test's stand-in).
Everything a push needs is checked before the run's first paid call (``check``), so a run is never
paid for to find out that it cannot be published.
"""
from __future__ import annotations

import os
import re
from pathlib import Path

from ..core.errors import UserError, first_line

TOKEN_VARIABLES = ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN")
_REPO = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,95}/[A-Za-z0-9][A-Za-z0-9._-]{0,95}$")


def _token() -> str | None:
    return next((os.environ[v] for v in TOKEN_VARIABLES if os.environ.get(v)), None)


def check(repo: str, fmt: str) -> None:
    """A push can happen: --format hf, a repo id OWNER/NAME, the client installed, a token in the environment."""
    if fmt != "hf":
        raise UserError(f"--push-to-hub {repo}: needs --format hf (a dataset folder with its card), got --format {fmt}")
    if not _REPO.match(repo):
        raise UserError(f"--push-to-hub {repo!r}: write the dataset repo as OWNER/NAME")
    try:
        import huggingface_hub  # noqa: F401
    except ImportError:
        raise UserError("--push-to-hub needs the 'huggingface_hub' package (pip install 'auto-evol[hf]')") from None
    if _token() is None:
        raise UserError("--push-to-hub: no Hugging Face token in the environment; set HF_TOKEN "
                        "(a write token from https://huggingface.co/settings/tokens)")


def push(folder: Path, repo: str, *, private: bool = False, message: str = "auto-evol evolve") -> str:
    """Upload ``folder`` to the dataset repo ``repo``; returns the repo's URL. A refusal (bad token,
    no right to the namespace, the Hub unreachable) is one line that names the repo, not the token."""
    from huggingface_hub import HfApi

    api = HfApi(endpoint=os.environ.get("HF_ENDPOINT") or None, token=_token())
    try:
        url = api.create_repo(repo, repo_type="dataset", private=private, exist_ok=True)
        api.upload_folder(folder_path=str(folder), repo_id=repo, repo_type="dataset", commit_message=message)
    except Exception as exc:
        text = first_line(exc)
        token = _token()
        if token:
            text = text.replace(token, "***")
        raise UserError(f"--push-to-hub {repo}: the Hub refused the upload ({text}); the dataset is in {folder}, "
                        f"rerun the same command to push it again") from None
    return str(url)
