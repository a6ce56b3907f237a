"""Download the served weights inside `docker build`: from the hub at a pinned revision, or from
the URLs of a weights lock, each file checked against its size and sha256.

    python fetch_weights.py hub MODEL_ID REVISION OUT_DIR
    python fetch_weights.py url weights.lock.json OUT_DIR

hub: the token comes from the BuildKit secret file /run/secrets/hf_token (absent for public models),
so it never appears in a layer, the image config or the build log.
url: weights.lock.json (written by `harness submission weights --url-base`) lists every file as
{"path", "url", "size", "sha256"}; any HTTPS server works (a hub `resolve/<commit>/` URL, S3, your
own). A file of another size or hash fails the build with a message naming it, so the image
holds exactly the model that was locked.
"""

from __future__ import annotations

import hashlib
import json
import re
import sys
import urllib.request
from pathlib import Path, PurePosixPath

SECRET = Path("/run/secrets/hf_token")
CHUNK = 1 << 20


def from_hub(model_id: str, revision: str, out_dir: str) -> None:
    from huggingface_hub import snapshot_download

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


def fetch(entry: dict[str, object], out_dir: Path) -> None:
    """Stream one locked file to its place, hashing as it comes; a mismatch stops the build."""
    relative = PurePosixPath(str(entry["path"]))
    if relative.is_absolute() or ".." in relative.parts:
        sys.exit(f"weights lock: {relative} is not a path inside the model folder")
    target = out_dir / relative
    target.parent.mkdir(parents=True, exist_ok=True)
    digest, size = hashlib.sha256(), 0
    with urllib.request.urlopen(str(entry["url"]), timeout=60) as answer, target.open("wb") as out:
        while chunk := answer.read(CHUNK):
            digest.update(chunk)
            size += len(chunk)
            out.write(chunk)
    if size != entry["size"] or digest.hexdigest() != entry["sha256"]:
        target.unlink()
        sys.exit(
            f"weights file {relative} from {entry['url']} does not match the lock: "
            f"{size} bytes, sha256 {digest.hexdigest()}; locked {entry['size']} bytes, "
            f"sha256 {entry['sha256']}"
        )
    print(f"{relative}: {size} bytes, sha256 verified", flush=True)


def from_lock(lock_path: str, out_dir: str) -> None:
    files = json.loads(Path(lock_path).read_text()).get("files") or []
    if not files:
        sys.exit(
            f"{Path(lock_path).name} lists no files: run `harness submission weights . MODEL_DIR "
            "--url-base URL` after uploading the merged model there"
        )
    for entry in files:
        fetch(entry, Path(out_dir))


def main() -> None:
    mode, *args = sys.argv[1:] or [""]
    if mode == "hub" and len(args) == 3:
        from_hub(*args)
    elif mode == "url" and len(args) == 2:
        from_lock(*args)
    else:
        sys.exit(__doc__)


if __name__ == "__main__":
    main()
