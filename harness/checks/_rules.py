"""The rules: what a text file, a requirements file and a Dockerfile are checked for."""

from __future__ import annotations

import json
import posixpath
import re
from dataclasses import dataclass, field

from harness.checks._deps import (
    Issue,
    download_issues,
    parse_pip_install,
    pip_install_args,
    pip_issues,
    requirements_file_issues,
    safe_url,
    shell_commands,
    url_is_pinned,
)
from harness.checks._dockerfile import (
    Instruction,
    assignments,
    expand,
    has_digest,
    image_tag,
    needed_stages,
    parse,
)
from harness.checks._dockerignore import DockerIgnore, glob_regex
from harness.checks._model import Finding, Severity
from harness.secrets import find_secrets, is_placeholder, looks_random, mask

FIX_SECRET = (
    "pass credentials as build secrets (`RUN --mount=type=secret,id=hf_token ...` with "
    "`docker build --secret id=hf_token,env=HF_TOKEN`) or as run-time environment variables"
)
_CODE_SUFFIXES = {".py", ".sh", ".bash", ".yaml", ".yml", ".json", ".toml", ".cfg", ".ini", ".conf"}
_REQUIREMENTS = re.compile(r"(?i)(?:requirements|constraints)[^/]*\.txt$")
# A credential-looking name (found in the lowercased text: fast), then right after it `=`, `:`
# or a space (`--token <token>`), then the value.
# A tokenizer's special tokens (`"unk_token": "<unk>"`) are words, not credentials.
_SECRET_WORD = re.compile(
    r"(?<!unk_)(?<!pad_)(?<!bos_)(?<!eos_)(?<!sep_)(?<!cls_)(?<!mask_)"
    r"(?:token|api[_-]?key|apikey|secret|password|passwd)\b"
)
_VALUE_AFTER = re.compile(
    r"""["']?\]?[ \t]*(?:[:=]|[ \t])[ \t]*(?:"(?P<dq>[^"\n]{1,80})"|'(?P<sq>[^'\n]{1,80})'"""
    r"""|(?P<angle><[^<>\n]{1,60}>)|(?P<bare>[^\s"',;)\]}]{1,80}))"""
)
_LOCAL_PATH = re.compile(
    r"""(?m)(?:/home/[A-Za-z0-9_][\w.-]*|/Users/[A-Za-z0-9_][\w.-]*)/[^\s"'`,;)\]}]*"""
    r"""|(?:(?<=["'=\s(])|^)[A-Za-z]:\\{1,2}[\w .-]{2,}(?:\\{1,2}[\w .-]+)+"""
)
# Secret-bearing names of ENV/ARG: TOKEN, SECRET, PASSWORD, API/ACCESS/SECRET/PRIVATE KEY.
_SECRET_NAME = re.compile(
    r"(?i)(?:^|_)(?:TOKEN|SECRET|PASSWORD|PASSWD|(?:API|ACCESS|SECRET|PRIVATE)_?KEY)$"
)
_MOVING_TAG = re.compile(
    r"(?i)(?:^|[-_.])(?:latest|nightly|edge|canary|unstable|dev|main|master)(?:[-_.]|$)"
)
_AUTHOR_PATH = re.compile(r"^(?:/home/|/Users/|[A-Za-z]:[\\/])")


def _finding(rule: str, severity: Severity, path: str, line: int | None, message: str) -> Finding:
    return Finding(rule, severity, path, line, message)


def _line_of(text: str, offset: int) -> int:
    return text.count("\n", 0, offset) + 1


def is_requirements_file(path: str) -> bool:
    return bool(_REQUIREMENTS.search(posixpath.basename(path)))


def _notebook_code(text: str) -> str:
    """A notebook's code cells only: its outputs (tracebacks) name paths of the author's machine
    that its code does not use."""
    try:
        cells = json.loads(text).get("cells", [])
    except (ValueError, AttributeError):
        return ""
    return "\n".join(
        "".join(cell.get("source", []))
        for cell in cells
        if isinstance(cell, dict) and cell.get("cell_type") == "code"
    )


def text_findings(path: str, text: str) -> list[Finding]:
    """leaked-secret, secret-placeholder and local-path in any text file of an entry."""
    name = posixpath.basename(path)
    suffix = posixpath.splitext(name)[1].lower()
    # JSON escapes the quotes of `os.environ["HF_TOKEN"] = "..."`; unescaping keeps the lines.
    scanned = text.replace('\\"', '"') if suffix in {".ipynb", ".json"} else text
    findings = [
        _finding(
            "leaked-secret",
            "error",
            path,
            secret.line,
            f"{secret.kind} `{secret.redacted}`: revoke it, remove it from the entry, and "
            + FIX_SECRET,
        )
        for secret in find_secrets(scanned)
    ]
    for word in _SECRET_WORD.finditer(scanned.lower()):
        match = _VALUE_AFTER.match(scanned, word.end())
        if match:
            value = next(v for v in match.group("dq", "sq", "angle", "bare") if v is not None)
            if is_placeholder(value):
                findings.append(
                    _finding(
                        "secret-placeholder",
                        "info",
                        path,
                        _line_of(scanned, match.start()),
                        f"placeholder `{value}` where a credential goes: not a leak, but never "
                        f"put the real one here; {FIX_SECRET}",
                    )
                )
    if name.startswith(".env") or suffix in _CODE_SUFFIXES or suffix == ".ipynb":
        findings += _local_paths(path, text, notebook=suffix == ".ipynb")
    return findings


def _local_paths(path: str, text: str, *, notebook: bool) -> list[Finding]:
    code = _notebook_code(text) if notebook else text
    if "/home/" not in code and "/Users/" not in code and ":\\" not in code:
        return []
    return [
        _finding(
            "local-path",
            "error",
            path,
            # a notebook's lines are those of its code cells, not of the JSON file
            None if notebook else _line_of(code, match.start()),
            f"absolute path from the author's machine `{match.group(0)[:80]}`: it does not exist "
            "in the container; ship the file in the build context and use a path relative to it",
        )
        for match in _LOCAL_PATH.finditer(code)
    ]


def requirements_findings(path: str, text: str) -> list[Finding]:
    return [
        _finding(rule, severity, path, line, message)
        for line, (rule, severity, message) in requirements_file_issues(text)
    ]


@dataclass(slots=True)
class BuildContext:
    """The Dockerfile's folder as `docker build` sees it: paths relative to it, minus ignores."""

    paths: set[str]
    ignore: DockerIgnore
    hashed_requirements: set[str] = field(default_factory=set)  # basenames with --hash= lines

    def status(self, source: str) -> str:
        """ "ok", "missing" or "ignored" for a COPY/ADD source (already variable-expanded)."""
        cleaned = posixpath.normpath(source.lstrip("/")) if source.strip("/") else "."
        if cleaned == ".":
            return "ok"
        if cleaned == ".." or cleaned.startswith("../"):
            return "missing"
        if any(char in cleaned for char in "*?["):
            regex = glob_regex(cleaned)
            matches = [p for p in self.paths if regex.fullmatch(p)]
        else:
            matches = [cleaned] if cleaned in self.paths else []
        if not matches:
            return "missing"
        return "ignored" if all(self.ignore.excludes(p) for p in matches) else "ok"


def pip_requirement_files(dockerfile_text: str) -> set[str]:
    """Basenames of the files a Dockerfile installs with `pip install -r`."""
    names: set[str] = set()
    for instruction in parse(dockerfile_text):
        if instruction.keyword == "RUN":
            script = "\n".join((instruction.args, *instruction.heredocs))
            for words in shell_commands(script):
                if (args := pip_install_args(words)) is not None:
                    names.update(posixpath.basename(f) for f in parse_pip_install(args).files)
    return names


class _DockerfileChecker:
    """One pass over the instructions, tracking build args, stages and environment."""

    def __init__(self, path: str, context: BuildContext) -> None:
        self.path = path
        self.context = context
        self.findings: list[Finding] = []
        self.global_args: dict[str, str] = {}
        self.declared_globals: set[str] = set()
        self.variables: dict[str, str] = {}
        self.stages: set[str] = set()
        self.in_stage = False
        self.stage_index = -1
        self.needed: set[int] = set()

    def add(self, rule: str, severity: Severity, line: int, message: str) -> None:
        self.findings.append(_finding(rule, severity, self.path, line, message))

    def add_issues(self, issues: list[Issue], line: int) -> None:
        for rule, severity, message in issues:
            self.add(rule, severity, line, message)

    def run(self, text: str) -> list[Finding]:
        instructions = parse(text)
        self.needed = needed_stages(instructions)
        for instruction in instructions:
            handler = getattr(self, f"_on_{instruction.keyword.lower()}", None)
            if handler is not None:
                handler(instruction)
        return self.findings

    def _on_from(self, instruction: Instruction) -> None:
        words = instruction.args.split()
        self.in_stage = True
        self.stage_index += 1
        self.variables = {}
        if not words:
            return
        image = expand(words[0], self.global_args)
        stage = words[2].lower() if len(words) >= 3 and words[1].lower() == "as" else ""
        self._check_image(words[0], image, instruction.line)
        if stage:
            self.stages.add(stage)

    def _check_image(self, written: str, image: str | None, line: int) -> None:
        if image is None:
            self.add(
                "unpinned-base-image",
                "warning",
                line,
                f"FROM `{written}` uses a build argument without a default: the base image is "
                "whatever the builder passes; give the ARG a default pinned by digest",
            )
            return
        if image.lower() in self.stages or image.lower() == "scratch" or has_digest(image):
            return
        tag = image_tag(image)
        if tag is None or _MOVING_TAG.search(tag):
            self.add(
                "unpinned-base-image",
                "error",
                line,
                f"base image `{image}` follows a moving tag (`{tag or 'latest'}`): pin a release "
                "tag and its digest (`image:tag@sha256:...`)",
            )
        else:
            self.add(
                "unpinned-base-image",
                "warning",
                line,
                f"base image `{image}` has no digest: a tag can be re-pushed; "
                f"use `{image}@sha256:<digest>`",
            )

    def _on_arg(self, instruction: Instruction) -> None:
        for name, value in assignments(instruction):
            scope = self.variables if self.in_stage else self.global_args
            if value is None:
                if self.in_stage and name in self.global_args:
                    scope[name] = self.global_args[name]
                if not self.in_stage:
                    self.declared_globals.add(name)
                if _SECRET_NAME.search(name):
                    self.add(
                        "secret-in-image-config",
                        "info",
                        instruction.line,
                        f"ARG {name}: build arguments are recorded in the image history; "
                        + FIX_SECRET,
                    )
                continue
            self._check_config_value("ARG", name, value, instruction.line)
            resolved = expand(value, {**self.global_args, **self.variables}, strict=False)
            scope[name] = resolved if resolved is not None else value

    def _on_env(self, instruction: Instruction) -> None:
        for name, value in assignments(instruction):
            if value is None:
                continue
            self._check_config_value("ENV", name, value, instruction.line)
            resolved = expand(value, self.variables, strict=False)
            self.variables[name] = resolved if resolved is not None else value

    def _check_config_value(self, keyword: str, name: str, value: str, line: int) -> None:
        if not value:
            return
        found = find_secrets(value)
        secret_named = bool(_SECRET_NAME.search(name))
        if found or (secret_named and "$" not in value and looks_random(value)):
            shown = found[0].redacted if found else mask(value)
            self.add(
                "secret-in-image-config",
                "error",
                line,
                f"{keyword} {name}=`{shown}` bakes a credential into the image, where anyone "
                f"who pulls it can read it; {FIX_SECRET}",
            )
        elif secret_named:
            what = "a placeholder" if is_placeholder(value) else "a value"
            if "$" in value:
                what = "a build argument's value"
            self.add(
                "secret-in-image-config",
                "warning",
                line,
                f"{keyword} {name} is given {what} that stays in the image config; {FIX_SECRET}",
            )

    def _on_run(self, instruction: Instruction) -> None:
        script = "\n".join((instruction.args, *instruction.heredocs))
        script = expand(script, self.variables, strict=False) or script
        for words in shell_commands(script):
            if (args := pip_install_args(words)) is not None:
                install = parse_pip_install(args)
                self.add_issues(
                    pip_issues(install, self.context.hashed_requirements), instruction.line
                )
            self.add_issues(download_issues(words, script), instruction.line)

    def _on_copy(self, instruction: Instruction) -> None:
        if "from" in instruction.flags:
            return  # from another stage or image, not from the context
        args = instruction.args
        if args.startswith("["):
            try:
                items = [str(item) for item in json.loads(args)]
            except ValueError:
                items = args.split()
        else:
            items = args.split()
        for source in items[:-1]:
            if source.startswith("<<"):
                continue  # a heredoc is inline content
            expanded = expand(source, {**self.global_args, **self.variables})
            if expanded is None:
                continue
            if "://" in expanded or expanded.startswith("git@"):
                self._check_add_url(instruction, expanded)
                continue
            self._check_source(instruction, source, expanded)

    _on_add = _on_copy

    def _check_add_url(self, instruction: Instruction, url: str) -> None:
        if "checksum" in instruction.flags:
            return
        if url.startswith("git@") or url.split("#", 1)[0].endswith(".git"):
            ref = url.split("#", 1)[1] if "#" in url else ""
            if re.fullmatch(r"[0-9a-f]{40}", ref.split(":", 1)[0]):
                return
            message = f"ADD of repository `{safe_url(url)}` is not pinned: add `#<40-hex sha>`"
        elif url_is_pinned(url):
            return
        else:
            message = (
                f"ADD `{safe_url(url)}` fetches an unpinned URL: add `--checksum=sha256:...` "
                "or pin a version in the URL"
            )
        self.add("remote-artifact", "warning", instruction.line, message)

    def _check_source(self, instruction: Instruction, written: str, source: str) -> None:
        status = self.context.status(source)
        if status == "ok" or self.stage_index not in self.needed:
            return
        if _AUTHOR_PATH.match(source):
            why = "is an absolute path from the author's machine; the build only sees its context"
        elif status == "ignored":
            why = "is excluded by .dockerignore"
        else:
            why = "is not in the build context (the Dockerfile's folder)"
        self.add(
            "missing-artifact",
            "error",
            instruction.line,
            f"{instruction.keyword} source `{written}` {why}",
        )


def dockerfile_findings(path: str, text: str, context: BuildContext) -> list[Finding]:
    return _DockerfileChecker(path, context).run(text)


_WEIGHTS_ARG = re.compile(r"^ARG WEIGHTS=(\S+)", re.MULTILINE)
_REVISION_ARG = re.compile(r"^ARG MODEL_REVISION=(\S*)", re.MULTILINE)
_SHA1 = re.compile(r"[0-9a-f]{40}")
_SHA256 = re.compile(r"[0-9a-f]{64}")
WEIGHTS_LOCK = "weights.lock.json"  # harness.submission.WEIGHTS_LOCK, read by fetch_weights.py


def weights_findings(path: str, text: str, lock: str | None) -> list[Finding]:
    """A rendered submission's served weights must be pinned: `WEIGHTS=hub` to a commit sha (a
    branch moves under the entry), `WEIGHTS=url` to a lock listing each file's size and sha256.
    `lock` is the text of weights.lock.json beside the Dockerfile, None when there is none."""
    weights = _WEIGHTS_ARG.search(text)
    if weights is None:
        return []
    line = _line_of(text, weights.start())
    if weights[1] == "hub":
        revision = _REVISION_ARG.search(text)
        if revision is None or not _SHA1.fullmatch(revision[1]):
            value = revision[1] if revision else ""
            where = _line_of(text, revision.start()) if revision else line
            return [
                _finding("unpinned-weights", "error", path, where,
                         f"WEIGHTS=hub with MODEL_REVISION {value!r}: pin the model to a commit "
                         "sha (a branch or no revision can change under the entry)")
            ]  # fmt: skip
    if weights[1] == "url":
        try:
            files = json.loads(lock or "")["files"]
            pinned = bool(files) and all(
                isinstance(f["size"], int) and _SHA256.fullmatch(str(f["sha256"])) for f in files
            )
        except (ValueError, KeyError, TypeError):
            pinned = False
        if not pinned:
            return [
                _finding("unpinned-weights", "error", path, line,
                         f"WEIGHTS=url needs {WEIGHTS_LOCK} listing every file with its size and "
                         "sha256: run `harness submission weights . MODEL_DIR --url-base URL`")
            ]  # fmt: skip
    return []
