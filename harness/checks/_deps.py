"""Pins: pip commands in shell lines, requirements files, downloads of URLs and git repositories."""

from __future__ import annotations

import posixpath
import re
import shlex
from dataclasses import dataclass, field
from urllib.parse import urlsplit, urlunsplit

from packaging.requirements import InvalidRequirement, Requirement
from packaging.version import InvalidVersion, Version

from harness.checks._model import Severity

_SEPARATORS = {"&&", "||", ";", "|", "&", "(", ")", ";;", "|&"}
_REDIRECTS = {">", ">>", "<", "<<", ">&", "<&", "&>", "&>>", ">|", "<>", "<<<"}
_PIP = re.compile(r"pip(?:\d+(?:\.\d+)?)?")
_PYTHON = re.compile(r"python(?:\d+(?:\.\d+)?)?")
_SHA = re.compile(r"^[0-9a-f]{40}$")
_NIGHTLY = re.compile(r"(?i)nightly|test\.pypi\.org|/pre(?:release)?s?/")
_CHECKSUM_TOOLS = re.compile(r"\b(?:sha(?:1|224|256|384|512)sum|shasum|b2sum|md5sum)\b|--checksum")
_VERSIONED = re.compile(r"\d+\.\d+|/v\d+|[0-9a-f]{40}")
_MOVING = re.compile(r"(?i)(?:^|[/=_.-])(?:latest|nightly|main|master|head|stable)(?:[/?#&._-]|$)")
_PIP_VALUE_OPTIONS = frozenset(
    (
        "-r", "--requirement", "-c", "--constraint", "-e", "--editable", "-i", "--index-url",
        "--extra-index-url", "-f", "--find-links", "-t", "--target", "--prefix", "--root",
        "--platform", "--python-version", "--implementation", "--abi", "--only-binary",
        "--no-binary", "--progress-bar", "--cache-dir", "--src", "--trusted-host",
        "--config-settings", "-C", "--global-option", "--log", "--proxy", "--retries", "--timeout",
        "--exists-action", "--upgrade-strategy", "--report", "--python", "--cert", "--client-cert",
        "--keyring-provider", "--root-user-action", "--group", "--index", "--default-index",
    )
)  # fmt: skip

Issue = tuple[str, Severity, str]  # rule, severity, message


def safe_url(url: str) -> str:
    """A URL fit for a message: no user:password@ part, no query (either may carry a token)."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return "<unparsable URL>"
    host = parts.hostname or ""
    if parts.port:
        host = f"{host}:{parts.port}"
    return urlunsplit((parts.scheme, host, parts.path, "", parts.fragment))


def shell_commands(script: str) -> list[list[str]]:
    """Simple commands of a shell script as words; redirection operators stay as their own words
    so that an unquoted `torch>=2.0` (a redirect to a file named `=2.0`) can be recognised."""
    commands: list[list[str]] = []
    for line in re.sub(r"\\\n", " ", script).splitlines():
        lexer = shlex.shlex(line, posix=True, punctuation_chars=True)
        lexer.whitespace_split = True
        lexer.commenters = "#"
        try:
            words = list(lexer)
        except ValueError:  # unbalanced quotes: fall back to plain words
            words = line.split()
        current: list[str] = []
        for word in words:
            if word in _SEPARATORS:
                commands.append(current)
                current = []
            else:
                current.append(word)
        commands.append(current)
    return [command for command in commands if command]


def _program(words: list[str]) -> list[str]:
    """Drop leading `VAR=value` assignments and wrappers so the program comes first."""
    index = 0
    while index < len(words) and (
        re.match(r"^[A-Za-z_]\w*=", words[index]) or words[index] in {"sudo", "env", "exec", "time"}
    ):
        index += 1
    return words[index:]


def pip_install_args(words: list[str]) -> list[str] | None:
    """The arguments after `pip install` (also `python -m pip`, `uv pip`), else None."""
    words = _program(words)
    if not words:
        return None
    program = posixpath.basename(words[0])
    if _PIP.fullmatch(program):
        rest = words[1:]
    elif _PYTHON.fullmatch(program) and words[1:3] == ["-m", "pip"]:
        rest = words[3:]
    elif program == "uv" and words[1:2] == ["pip"]:
        rest = words[2:]
    else:
        return None
    return rest[1:] if rest[:1] == ["install"] else None


@dataclass(slots=True)
class PipInstall:
    """What one `pip install` asks for."""

    requirements: list[str] = field(default_factory=list)
    files: list[str] = field(default_factory=list)  # -r
    editables: list[str] = field(default_factory=list)
    indexes: list[str] = field(default_factory=list)
    flags: set[str] = field(default_factory=set)
    redirected: list[str] = field(default_factory=list)  # `name>=x` the shell split apart


def parse_pip_install(args: list[str]) -> PipInstall:
    parsed = PipInstall()
    index = 0
    while index < len(args):
        word = args[index]
        index += 1
        if word in _REDIRECTS:
            previous = args[index - 2] if index >= 2 else ""
            target = args[index] if index < len(args) else ""
            index += 1
            # `torch>=2.0` arrives as `torch` `>` `=2.0`; `2>&1` and `> /dev/null` are real.
            is_range = target[:1] == "=" or target[:1].isdigit()
            if word in {">", "<"} and is_range and not previous.isdigit():
                parsed.redirected.append(f"{previous}{word}{target}")
            continue
        if index < len(args) and args[index] in _REDIRECTS and word.isdigit():
            continue  # the `2` of `2>&1`
        if word.startswith("-"):
            option, eq, value = word.partition("=")
            if option in _PIP_VALUE_OPTIONS:
                if not eq:
                    value = args[index] if index < len(args) else ""
                    index += 1
                if option in {"-r", "--requirement"}:
                    parsed.files.append(value)
                elif option in {"-e", "--editable"}:
                    parsed.editables.append(value)
                elif option in {"-i", "--index-url", "--extra-index-url", "-f", "--find-links"}:
                    parsed.indexes.append(value)
            else:
                parsed.flags.add(option)
            continue
        parsed.requirements.append(word)
    # A redirect swallowed the name before it as a requirement: report it once, as redirected.
    for broken in parsed.redirected:
        name = re.split(r"[<>]", broken, maxsplit=1)[0]
        if name in parsed.requirements:
            parsed.requirements.remove(name)
    return parsed


def _is_local(spec: str) -> bool:
    return spec.startswith((".", "/", "~", "file:")) or (
        spec.endswith((".whl", ".tar.gz", ".zip", ".tgz")) and "://" not in spec
    )


def _url_issue(url: str, what: str) -> Issue | None:
    """A `git+` URL must end in a commit sha; another URL needs a `#sha256=` or a version."""
    if url.startswith("git+") or url.endswith(".git") or "@git" in url:
        ref = url.split("#", 1)[0].rsplit("@", 1)
        if len(ref) == 2 and "/" not in ref[1] and _SHA.match(ref[1]):
            return None
        return (
            "unpinned-dependency",
            "error",
            f"{what} `{safe_url(url)}` is not pinned to a commit: end the URL with `@<40-hex sha>`",
        )
    if "#sha256=" in url or "#sha512=" in url:
        return None
    return (
        "remote-artifact",
        "warning",
        f"{what} downloads `{safe_url(url)}` without a checksum: add `#sha256=<digest>`",
    )


def requirement_issue(spec: str) -> Issue | None:
    """Whether one requirement is pinned: `name==version` (not a pre-release), a local path, a
    `git+` URL at a commit sha, or an archive URL with a checksum."""
    spec = spec.strip()
    if not spec or "$" in spec or _is_local(spec):
        return None
    if "://" in spec or spec.startswith("git+"):
        url = spec.split(" @ ", 1)[-1].strip() if " @ " in spec else spec
        return _url_issue(
            url, f"requirement `{spec.split(' @ ', 1)[0]}`" if " @ " in spec else "a requirement"
        )
    try:
        requirement = Requirement(spec)
    except InvalidRequirement:
        return None
    if requirement.url:
        return _url_issue(requirement.url, f"requirement `{requirement.name}`")
    specifiers = list(requirement.specifier)
    pinned = len(specifiers) == 1 and specifiers[0].operator in {"==", "==="}
    if not pinned or "*" in specifiers[0].version:
        shown = str(requirement.specifier) or "no version"
        return (
            "unpinned-dependency",
            "error",
            f"`{requirement.name}` is not pinned ({shown}): use `{requirement.name}==VERSION`, "
            "best from a hash-pinned lockfile installed with --require-hashes",
        )
    try:
        prerelease = Version(specifiers[0].version).is_prerelease
    except InvalidVersion:
        prerelease = False
    if prerelease:
        return (
            "unpinned-dependency",
            "error",
            f"`{requirement.name}=={specifiers[0].version}` is a pre-release or nightly build",
        )
    return None


def _index_issues(indexes: list[str], pre: bool) -> list[Issue]:
    issues: list[Issue] = [
        ("unpinned-dependency", "error", f"nightly or pre-release index `{safe_url(url)}`")
        for url in indexes
        if _NIGHTLY.search(url)
    ]
    if pre:
        issues.append(("unpinned-dependency", "error", "`--pre` installs pre-releases"))
    return issues


def pip_issues(install: PipInstall, hashed_files: set[str]) -> list[Issue]:
    """Issues of one `pip install`; `hashed_files` are the -r files known to carry `--hash=`."""
    issues: list[Issue] = [
        (
            "unpinned-dependency",
            "error",
            f"`{broken}` is unquoted: the shell reads `>`/`<` as a redirect, installs the package "
            "unpinned and writes a stray file; pin it with `==` (quoted if it has a range)",
        )
        for broken in install.redirected
    ]
    for spec in install.requirements + install.editables:
        if issue := requirement_issue(spec):
            issues.append(issue)
    issues += _index_issues(install.indexes, "--pre" in install.flags)
    if "--require-hashes" not in install.flags:
        issues += [
            (
                "unpinned-dependency",
                "warning",
                f"`{name}` is installed without --require-hashes: a re-published or compromised "
                "file would go unnoticed; lock with `pip-compile --generate-hashes`",
            )
            for name in install.files
            if posixpath.basename(name) not in hashed_files
        ]
    return issues


def requirements_file_issues(text: str) -> list[tuple[int, Issue]]:
    """Issues of a requirements file, with their line numbers."""
    issues: list[tuple[int, Issue]] = []
    logical, first = "", 0
    for number, raw in enumerate(text.splitlines(), start=1):
        if not logical:
            first = number
        line = re.sub(r"(^|\s)#.*$", "", raw)
        if line.rstrip().endswith("\\"):
            logical += line.rstrip()[:-1] + " "
            continue
        logical += line
        statement, logical = logical.strip(), ""
        if not statement:
            continue
        if statement.startswith("-"):
            words = statement.split()
            option, _, value = words[0].partition("=")
            value = value or (words[1] if len(words) > 1 else "")
            if option in {"-e", "--editable"} and (issue := requirement_issue(value)):
                issues.append((first, issue))
            elif option in {"-i", "--index-url", "--extra-index-url", "-f", "--find-links"}:
                issues += [(first, issue) for issue in _index_issues([value], pre=False)]
            elif option == "--pre":
                issues += [(first, issue) for issue in _index_issues([], pre=True)]
            continue
        requirement = re.split(r"\s--hash[=\s]", statement, maxsplit=1)[0]
        if issue := requirement_issue(requirement):
            issues.append((first, issue))
    return issues


def download_issues(words: list[str], script: str) -> list[Issue]:
    """wget/curl of a URL with neither a version in it nor a checksum check in the same RUN, and
    `git clone` without a checkout of a commit sha."""
    words = _program(words)
    if not words:
        return []
    program = posixpath.basename(words[0])
    if program in {"wget", "curl"}:
        if _CHECKSUM_TOOLS.search(script):
            return []
        return [
            (
                "remote-artifact",
                "warning",
                f"`{program} {safe_url(url)}` fetches an unpinned URL: pin a version in it or "
                "verify a checksum (`echo '<sha256>  file' | sha256sum -c`)",
            )
            for url in words[1:]
            if url.startswith(("http://", "https://", "ftp://")) and not url_is_pinned(url)
        ]
    if program == "git" and "clone" in words[1:3]:
        if re.search(r"\b(?:checkout|reset --hard|switch --detach)\s+[0-9a-f]{40}\b", script):
            return []
        urls = [w for w in words if "://" in w or w.startswith("git@")]
        shown = safe_url(urls[0]) if urls else "a repository"
        return [
            (
                "remote-artifact",
                "warning",
                f"`git clone {shown}` takes whatever the branch holds today: "
                "`git checkout <40-hex sha>` after cloning",
            )
        ]
    return []


def url_is_pinned(url: str) -> bool:
    """A version or commit in the URL, and no moving name such as `latest` or `main`."""
    path = urlsplit(url).path if "://" in url else url
    return bool(_VERSIONED.search(path)) and not _MOVING.search(path)
