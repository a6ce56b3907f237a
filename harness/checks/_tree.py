"""An entry's files: safe zip extraction, one walk of the tree, and the choice of its Dockerfile."""

from __future__ import annotations

import os
import posixpath
import re
import shutil
import stat
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from harness.checks._model import Finding

MANIFEST = "entry.yaml"
_DRIVE = re.compile(r"^[A-Za-z]:")


@dataclass(frozen=True, slots=True)
class Limits:
    """Size limits; the defaults fit a submission (code and configs, weights are downloaded)."""

    max_archive_bytes: int = 2 * 1024**3  # uncompressed size of a zip entry
    max_archive_members: int = 100_000
    max_text_bytes: int = 4 * 1024**2  # larger text files are reported, not scanned
    max_blob_bytes: int = 4 * 1024**2  # same for blobs in git history


@dataclass(slots=True)
class Tree:
    """Every path of an entry, relative and POSIX-style; `.git` folders are listed apart."""

    root: Path
    files: dict[str, int] = field(default_factory=dict)  # path -> size
    dirs: set[str] = field(default_factory=set)
    links: set[str] = field(default_factory=set)  # symlinks that stay inside the tree
    git_dirs: list[str] = field(default_factory=list)


def _malformed(path: str, message: str) -> Finding:
    return Finding("malformed-entry", "error", path, None, message)


def walk(root: Path, findings: list[Finding]) -> Tree:
    """List the tree once, never following a symlink; one pointing outside is a finding."""
    tree = Tree(root)
    real_root = os.path.realpath(root)
    pending = [""]
    while pending:
        folder = pending.pop()
        with os.scandir(root / folder) as scan:
            for item in scan:
                rel = f"{folder}/{item.name}" if folder else item.name
                if item.is_symlink():
                    target = os.path.realpath(item.path)
                    if target == real_root or target.startswith(real_root + os.sep):
                        tree.links.add(rel)
                    else:
                        findings.append(_malformed(rel, "symlink points outside the entry"))
                elif item.is_dir(follow_symlinks=False):
                    if item.name == ".git":
                        tree.git_dirs.append(rel)
                    else:
                        tree.dirs.add(rel)
                        pending.append(rel)
                elif item.is_file(follow_symlinks=False):
                    tree.files[rel] = item.stat(follow_symlinks=False).st_size
    return tree


def _unsafe_member(info: zipfile.ZipInfo, zf: zipfile.ZipFile) -> str | None:
    """Why a member may not be extracted, or None: absolute, `..`, or a symlink leaving the tree."""
    name = info.filename.replace("\\", "/")
    if name.startswith("/") or _DRIVE.match(name):
        return "absolute path"
    if ".." in name.split("/"):
        return "`..` in its path"
    if stat.S_ISLNK(info.external_attr >> 16):
        target = zf.read(info).decode("utf-8", "replace").replace("\\", "/")
        resolved = posixpath.normpath(posixpath.join(posixpath.dirname(name), target))
        if target.startswith("/") or _DRIVE.match(target) or resolved.split("/")[0] == "..":
            return "a symlink pointing outside the archive"
    return None


def extract_zip(archive: Path, into: Path, limits: Limits, findings: list[Finding]) -> bool:
    """Extract a zip entry under `into` (a fresh temporary folder) when it is readable and safe.

    Nothing is written before every member has been vetted, and nothing outside `into`: members
    are written one by one to paths built here, never with `extractall`. Symlinks inside the tree
    are skipped (a build context needs none). Returns whether the entry can be checked further.
    """
    name = archive.name
    try:
        with zipfile.ZipFile(archive) as zf:
            members = zf.infolist()
            if len(members) > limits.max_archive_members:
                findings.append(_malformed(name, f"{len(members)} members: over the limit"))
                return False
            total = sum(info.file_size for info in members)
            if total > limits.max_archive_bytes:
                findings.append(
                    _malformed(
                        name,
                        f"archive unpacks to {total:,} bytes, over the "
                        f"{limits.max_archive_bytes:,}-byte limit",
                    )
                )
                return False
            unsafe = [
                _malformed(info.filename, f"unsafe zip member: {why}")
                for info in members
                if (why := _unsafe_member(info, zf))
            ]
            if unsafe:
                findings.extend(unsafe)
                return False
            for info in members:
                if stat.S_ISLNK(info.external_attr >> 16):
                    continue
                target = into.joinpath(
                    *[p for p in info.filename.replace("\\", "/").split("/") if p]
                )
                if info.is_dir():
                    target.mkdir(parents=True, exist_ok=True)
                    continue
                target.parent.mkdir(parents=True, exist_ok=True)
                # ZipExtFile stops at the declared size, so `total` bounds what is written.
                with zf.open(info) as src, target.open("wb") as dst:
                    shutil.copyfileobj(src, dst, 1024 * 1024)
                # Whatever the umask: `COPY` keeps the mode, and entries' servers run as non-root.
                executable = (info.external_attr >> 16) & 0o111
                target.chmod(0o755 if executable else 0o644)
    except (zipfile.BadZipFile, zipfile.LargeZipFile, NotImplementedError, RuntimeError,
            EOFError, ValueError) as exc:  # fmt: skip
        # RuntimeError: encrypted members; NotImplementedError: unknown compression.
        findings.append(_malformed(name, f"unreadable zip: {type(exc).__name__}: {exc}"))
        return False
    return True


def clean_relative(path: str) -> str | None:
    """A manifest path made relative to the entry, or None when it would leave the entry."""
    path = path.replace("\\", "/")
    if path.startswith("/") or _DRIVE.match(path):
        return None
    cleaned = posixpath.normpath(path)
    return None if cleaned == ".." or cleaned.startswith("../") else cleaned


def choose_dockerfile(tree: Tree, findings: list[Finding]) -> str | None:
    """The entry's Dockerfile: entry.yaml's `dockerfile` if given, else the competition's rule.

    The rule: the first file named exactly `Dockerfile` walking the tree breadth-first, each
    folder's children in sorted order; that order is (depth, path components).
    """
    if MANIFEST in tree.files:
        try:
            manifest = yaml.safe_load((tree.root / MANIFEST).read_text(encoding="utf-8"))
        except (yaml.YAMLError, UnicodeDecodeError) as exc:
            findings.append(_malformed(MANIFEST, f"not valid YAML: {type(exc).__name__}"))
            return None
        named = manifest.get("dockerfile") if isinstance(manifest, dict) else None
        if named is not None:
            chosen = clean_relative(named) if isinstance(named, str) else None
            if chosen is None:
                findings.append(
                    _malformed(MANIFEST, "`dockerfile` must be a relative path inside the entry")
                )
                return None
            if chosen not in tree.files:
                findings.append(
                    Finding(
                        "no-dockerfile",
                        "error",
                        MANIFEST,
                        None,
                        f"entry.yaml names `{chosen}`, which is not a file of the entry",
                    )
                )
                return None
            return chosen
    candidates = [Path(p) for p in tree.files if posixpath.basename(p) == "Dockerfile"]
    if candidates:
        return min(candidates, key=lambda p: (len(p.parts), p.parts)).as_posix()
    near = sorted(p for p in tree.files if posixpath.basename(p).lower().startswith("dockerfile"))
    hint = ""
    if near:
        found = ", ".join(f"`{p}`" for p in near[:3])
        hint = f" (found {found}: the name must be exactly `Dockerfile`, or named in entry.yaml)"
    findings.append(
        Finding("no-dockerfile", "error", ".", None, f"no file named `Dockerfile`{hint}")
    )
    return None
