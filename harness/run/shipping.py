"""What travels between the driver and a Ray node that share no storage (ray_executor.py):

    driver ── inputs ──> node     the entry (its folder, or its zip as it is) and the files its
                                  options name (a --run-specs file, an --instances pack, a
                                  replayed HELM conf): at most INPUTS_CAP_BYTES, else refused
    driver <── results ── node    the entry's logs and HELM folder for the stage: at most
                                  RESULTS_CAP_BYTES; over it the biggest files are left out and
                                  listed in the logs' DROPPED_NOTE, never a file named in KEPT

Each travels as one gzip-compressed tar through Ray's object store (bounded by the caps, which
count the files before compression). The receiving side unpacks regular files and folders only,
each under a folder it expects: an absolute path, a `..`, a link or a device in the archive, or
more bytes than the cap, refuses the whole archive before anything is written; a link already
on the receiving side is never followed. Links in what is
sent are not followed: they stay behind.

    inputs = ship_inputs(job)                   driver
    local = receive_inputs(job, inputs, work)   node: the job with its paths under `work`
    results = ship_results(local)               node
    receive_results(job, results)               driver: into its RESULTS_DIR

A reproduction (`harness reproduce --top --executor ray`, reproduce/shipped.py) travels the same
way, through the same three calls: `pack_inputs` (the entry and what it needs of the original
run), `pack_capped` (its folder, back) and `receive` (either side).
"""

from __future__ import annotations

import io
import os
import shutil
import stat
import tarfile
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import replace
from pathlib import Path, PurePosixPath

from harness.errors import ConfigError, InfrastructureError
from harness.helm.confs import SHIPPED_CONFS
from harness.run.pipeline import EntryJob

# The service's default upload limit and the checks' limit on an unpacked zip: any entry they
# accept can travel.
INPUTS_CAP_BYTES = 2 * 1024**3
RESULTS_CAP_BYTES = 256 * 1024**2
# What the leaderboard, the reports and `harness reproduce` read from an entry's HELM folder:
# they always travel, whatever their size.
KEPT = frozenset({"stats.json", "per_instance_stats.json", "run_spec.json", "run_specs.conf"})
DROPPED_NOTE = "dropped-from-results.txt"
# Where a node works (inputs unpacked, results written before they travel back); each task has a
# folder of its own below it, removed when the task ends.
NODE_DIR_ENV = "HARNESS_NODE_DIR"


def _files(source: Path, arcname: str) -> list[tuple[str, Path, int]]:
    """(name in the archive, path, size) of each regular file at or under `source`."""
    if source.is_file() and not source.is_symlink():
        return [(arcname, source, source.stat().st_size)]
    found = []
    for folder, dirs, names in os.walk(source):  # os.walk does not follow links to folders
        for name in sorted(names):
            path = Path(folder, name)
            if path.is_file() and not path.is_symlink():
                relative = path.relative_to(source).as_posix()
                found.append((f"{arcname}/{relative}", path, path.stat().st_size))
        dirs.sort()
    return found


def _tar(files: Sequence[tuple[str, Path, int]]) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz", compresslevel=6) as archive:
        for arcname, path, _ in files:
            archive.add(path, arcname=arcname, recursive=False)
    return buffer.getvalue()


def _member_path(member: tarfile.TarInfo, roots: Sequence[str]) -> PurePosixPath:
    """The member's path, refused unless it is a plain relative path under one of `roots`."""
    path = PurePosixPath(member.name)
    if not (member.isfile() or member.isdir()):
        raise ValueError(f"{member.name!r} is not a regular file or folder")
    if path.is_absolute() or ".." in path.parts or "\\" in member.name:
        raise ValueError(f"{member.name!r} leaves the folder it is unpacked into")
    if not any(path == PurePosixPath(r) or PurePosixPath(r) in path.parents for r in roots):
        raise ValueError(f"{member.name!r} is under none of {', '.join(roots)}")
    return path


def unpack(data: bytes, root: Path, roots: Sequence[str], cap_bytes: int) -> list[Path]:
    """Unpack `data` (a gzip tar) into `root`, every member under one of `roots` (relative
    folders); returns the files written. Raises ValueError before writing anything when a
    member is not a plain file or folder under them or the files add up to more than
    `cap_bytes`, and from the first member whose way down `root` passes through a link already
    there; files already there are replaced, a link in their place removed first."""
    with tarfile.open(fileobj=io.BytesIO(data), mode="r:gz") as archive:
        members = archive.getmembers()
        paths = [_member_path(member, roots) for member in members]
        total = sum(member.size for member in members if member.isfile())
        if total > cap_bytes:
            raise ValueError(f"{total} bytes unpacked, more than the cap of {cap_bytes}")
        written = []
        for member, relative in zip(members, paths, strict=True):
            target = root.joinpath(*relative.parts)
            # A link among the folders already there would lead the write elsewhere.
            folder = root
            for part in relative.parts[:-1]:
                folder = folder / part
                if folder.is_symlink():
                    raise ValueError(f"{member.name!r} would be written outside {root}")
            if member.isdir():
                target.mkdir(parents=True, exist_ok=True)
                continue
            target.parent.mkdir(parents=True, exist_ok=True)
            if target.is_symlink() or target.is_dir():
                target.unlink() if target.is_symlink() else shutil.rmtree(target)
            source = archive.extractfile(member)
            assert source is not None  # a regular file
            with source, target.open("wb") as out:
                shutil.copyfileobj(source, out)
            target.chmod(stat.S_IRUSR | stat.S_IWUSR | stat.S_IRGRP | stat.S_IROTH)
            written.append(target)
    return written


# -- inputs: driver -> node ---------------------------------------------------------------------


def _inputs(job: EntryJob) -> dict[str, Path]:
    """What the node needs from the driver's disk: name in the archive -> path on the driver."""
    options = job.options
    items = {f"entry/{job.path.name}": job.path}
    if options.run_specs is not None and options.run_specs not in SHIPPED_CONFS:
        items[f"run-specs/{Path(options.run_specs).name}"] = Path(options.run_specs)
    if options.instances is not None:
        items[f"instances/{options.instances.name}"] = options.instances
    if options.helm_conf is not None:
        items[f"helm-conf/{options.helm_conf.name}"] = options.helm_conf
    return items


def ship_inputs(job: EntryJob) -> bytes:
    """The entry and the files its options name, packed; ConfigError over INPUTS_CAP_BYTES."""
    return pack_inputs(_inputs(job), f"{job.name} and the files its options name")


def pack_inputs(items: Mapping[str, Path], what: str) -> bytes:
    """`items` (name in the archive -> path here), packed; ConfigError over INPUTS_CAP_BYTES
    (`what` says whose files they are)."""
    files = [f for arcname, path in items.items() for f in _files(path, arcname)]
    total = sum(size for _, _, size in files)
    if total > INPUTS_CAP_BYTES:
        raise ConfigError(
            f"{what} hold {total / 1024**2:.0f} MiB, more "
            f"than the {INPUTS_CAP_BYTES / 1024**2:.0f} MiB sent to a Ray node: put entries on "
            "storage every node sees at the same path and run with --shared-storage"
        )
    return _tar(files)


def receive(data: bytes, root: Path, roots: Sequence[str], cap_bytes: int, what: str) -> list[Path]:
    """`unpack`, its refusal an InfrastructureError naming `what` travelled."""
    try:
        return unpack(data, root, roots, cap_bytes)
    except (ValueError, tarfile.TarError) as exc:
        raise InfrastructureError(f"{what} were refused: {exc}") from exc


def node_folder(run_id: str, name: str) -> Path:
    """Where a node works on one task of the run `run_id` (NODE_DIR_ENV, default: the system's
    temporary folder)."""
    base = Path(os.environ.get(NODE_DIR_ENV) or Path(tempfile.gettempdir(), "harness-node"))
    return base / run_id / name


def receive_inputs(job: EntryJob, data: bytes, work: Path) -> EntryJob:
    """Unpack the inputs under `work/inputs`; returns `job` as this node runs it: every path
    under `work` (its results in `work/results`)."""
    inputs = work / "inputs"
    items = _inputs(job)
    receive(data, inputs, list(items), INPUTS_CAP_BYTES, f"the inputs of {job.name}")
    local = {arcname: inputs / arcname for arcname in items}
    options = job.options
    return replace(
        job,
        path=local[f"entry/{job.path.name}"],
        options=replace(
            options,
            out=work / "results",
            run_specs=(
                str(local[f"run-specs/{Path(options.run_specs).name}"])
                if options.run_specs is not None and options.run_specs not in SHIPPED_CONFS
                else options.run_specs
            ),
            instances=options.instances and local[f"instances/{options.instances.name}"],
            helm_conf=options.helm_conf and local[f"helm-conf/{options.helm_conf.name}"],
        ),
    )


# -- results: node -> driver --------------------------------------------------------------------


def _result_folders(job: EntryJob) -> list[str]:
    out = job.options.out
    return [job.logs.relative_to(out).as_posix(), job.helm_dir.relative_to(out).as_posix()]


def ship_results(job: EntryJob, cap_bytes: int = RESULTS_CAP_BYTES) -> bytes:
    """The entry's logs and HELM folder, packed; over `cap_bytes` the biggest files but those
    named in KEPT are left out, and listed in the logs' DROPPED_NOTE (which travels)."""
    folders = _result_folders(job)
    return pack_capped(job.options.out, folders, folders[0], cap_bytes)


def pack_capped(
    root: Path,
    folders: Sequence[str],
    note_folder: str,
    cap_bytes: int = RESULTS_CAP_BYTES,
    *,
    leave_out: frozenset[str] = frozenset(),
) -> bytes:
    """The files under `folders` (relative to `root`; files named in `leave_out` stay behind),
    packed; over `cap_bytes` the biggest files but those named in KEPT are left out too, and
    listed in `note_folder`'s DROPPED_NOTE (which travels). What a node sends back: an
    entry's results (`ship_results`), a reproduction's folder (reproduce/shipped.py)."""
    files = [
        f for folder in folders if (root / folder).exists()
        for f in _files(root / folder, folder) if f[1].name not in leave_out
    ]  # fmt: skip
    total = sum(size for _, _, size in files)
    dropped = []
    for file in sorted(files, key=lambda f: f[2], reverse=True):
        if total <= cap_bytes:
            break
        if file[1].name not in KEPT:
            dropped.append(file)
            total -= file[2]
    if dropped:
        note = root / note_folder / DROPPED_NOTE
        note.parent.mkdir(parents=True, exist_ok=True)
        note.write_text(
            f"Left on the Ray node: these results held more than the "
            f"{cap_bytes} bytes sent back to the driver; the biggest files stayed behind:\n"
            + "".join(f"{size}\t{arcname}\n" for arcname, _, size in dropped)
        )
        files = [f for f in files if f not in dropped]
        files.append((f"{note_folder}/{DROPPED_NOTE}", note, note.stat().st_size))
    return _tar(files)


def receive_results(job: EntryJob, data: bytes) -> list[Path]:
    """Unpack what `ship_results` sent into the driver's RESULTS_DIR (`job.options.out`)."""
    # Twice the cap: files in KEPT and the note travel over it.
    out, folders = job.options.out, _result_folders(job)
    return receive(data, out, folders, 2 * RESULTS_CAP_BYTES, f"the results of {job.name}")
