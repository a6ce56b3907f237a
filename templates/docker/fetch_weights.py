"""Download a model at a pinned revision inside `docker build`, the token read from a build secret.

    python fetch_weights.py MODEL_ID REVISION OUT_DIR

The token comes from the BuildKit secret file /run/secrets/hf_token (absent for public models), so
it never appears in a layer, the image config or the build log.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

from huggingface_hub import snapshot_download

SECRET = Path("/run/secrets/hf_token")


def main() -> None:
    model_id, revision, out_dir = sys.argv[1:4]
    if not re.fullmatch(r"[0-9a-f]{40}", revision):
        sys.exit(f"revision {revision!r} is not a commit sha: pin the model to reproduce it")
    token = SECRET.read_text().strip() if SECRET.exists() else None
    snapshot_download(
        model_id,
        revision=revision,
        local_dir=out_dir,
        token=token or None,
        allow_patterns=["*.json", "*.safetensors", "tokenizer*", "*.model", "*.txt"],
    )


if __name__ == "__main__":
    main()
