"""Just enough of the Dockerfile syntax for the checks: instructions, flags, heredocs, variables."""

from __future__ import annotations

import re
from dataclasses import dataclass, field

_DIRECTIVE = re.compile(r"^#\s*escape\s*=\s*(\S)\s*$", re.IGNORECASE)
_HEREDOC = re.compile(r"<<(-?)([\"']?)([A-Za-z_][\w-]*)\2")
_FLAG = re.compile(r"--([\w-]+)(?:=(\S*))?\s+")
_VARIABLE = re.compile(r"\$(?:\{(?P<braced>[A-Za-z_]\w*)(?:(?P<op>:?[-+])(?P<word>[^}]*))?\}|"
                       r"(?P<bare>[A-Za-z_]\w*))")  # fmt: skip
_DIGEST = re.compile(r"@sha256:[0-9a-f]{64}$")


@dataclass(frozen=True, slots=True)
class Instruction:
    """One instruction: `args` is everything after the keyword and its `--flags`, continuations
    joined; `heredocs` are the bodies of `<<EOF` documents that follow it."""

    keyword: str
    args: str
    line: int
    flags: dict[str, str] = field(default_factory=dict)
    heredocs: tuple[str, ...] = ()


def parse(text: str) -> list[Instruction]:
    lines = text.splitlines()
    escape = "\\"
    for line in lines:  # parser directives come first, before any comment or instruction
        if not line.startswith("#"):
            break
        if directive := _DIRECTIVE.match(line):
            escape = directive.group(1)
    instructions: list[Instruction] = []
    index = 0
    while index < len(lines):
        start = index
        stripped = lines[index].strip()
        index += 1
        if not stripped or stripped.startswith("#"):
            continue
        parts = [stripped]
        while parts[-1].endswith(escape) and index < len(lines):
            parts[-1] = parts[-1][: -len(escape)]
            following = lines[index].strip()
            index += 1
            if not following.startswith("#"):  # comments may sit inside a continued instruction
                parts.append(following)
        logical = " ".join(parts)
        keyword, _, rest = logical.partition(" ")
        keyword = keyword.upper()
        flags: dict[str, str] = {}
        rest = rest.strip()
        if keyword in {"RUN", "COPY", "ADD", "FROM"}:
            while flag := _FLAG.match(rest + " "):
                name, value = flag.group(1), flag.group(2) or ""
                flags[name] = f"{flags[name]} {value}" if name in flags else value  # --mount twice
                rest = rest[flag.end() :].strip()
        bodies: list[str] = []
        if keyword in {"RUN", "COPY", "ADD"}:
            for strip_tabs, _, delimiter in _HEREDOC.findall(rest):
                body: list[str] = []
                while index < len(lines):
                    line = lines[index].lstrip("\t") if strip_tabs else lines[index]
                    index += 1
                    if line == delimiter:
                        break
                    body.append(line)
                bodies.append("\n".join(body))
        instructions.append(Instruction(keyword, rest, start + 1, flags, tuple(bodies)))
    return instructions


def expand(value: str, variables: dict[str, str], *, strict: bool = True) -> str | None:
    """Substitute `$X`, `${X}`, `${X:-default}`, `${X:+alt}`. A variable without a value makes
    the result None, or stays as written when not `strict` (a shell variable set in a RUN)."""
    missing = False

    def substitute(match: re.Match[str]) -> str:
        nonlocal missing
        name = match.group("braced") or match.group("bare")
        op, word = match.group("op"), match.group("word") or ""
        current = variables.get(name)
        is_set = current is not None and (current != "" or not (op or "").startswith(":"))
        if op and op.endswith("-"):
            return current if is_set and current is not None else word
        if op and op.endswith("+"):
            return word if is_set else ""
        if current is None:
            missing = True
            return "" if strict else match.group(0)
        return current

    result = _VARIABLE.sub(substitute, value)
    return None if missing and strict else result


def unquote(value: str) -> str:
    if len(value) >= 2 and value[0] == value[-1] and value[0] in "\"'":
        return value[1:-1]
    return value


def assignments(instruction: Instruction) -> list[tuple[str, str | None]]:
    """The (name, value) pairs of an ARG or ENV; an ARG without default has value None."""
    args = instruction.args
    if instruction.keyword == "ENV" and "=" not in args.split(" ", 1)[0]:
        name, _, value = args.partition(" ")  # legacy `ENV NAME value with spaces`
        return [(name, unquote(value.strip()))]
    pairs: list[tuple[str, str | None]] = []
    for word in re.findall(r"""(?:[^\s"']|"[^"]*"|'[^']*')+""", args):
        name, eq, value = word.partition("=")
        pairs.append((name, unquote(value) if eq else None))
    return pairs


def has_digest(image: str) -> bool:
    return bool(_DIGEST.search(image))


def image_tag(image: str) -> str | None:
    """The tag of an image reference (`python:3.11` -> `3.11`), None when it has none."""
    name = image.split("@", 1)[0]
    last = name.rsplit("/", 1)[-1]
    return last.split(":", 1)[1] if ":" in last else None


def needed_stages(instructions: list[Instruction]) -> set[int]:
    """Indexes of the stages the last stage needs (its base and `--from` sources, transitively):
    BuildKit builds only those, so a COPY in another stage cannot break the build."""
    global_args: dict[str, str] = {}
    names: dict[str, int] = {}
    needs: list[set[str]] = []
    for instruction in instructions:
        if instruction.keyword == "FROM":
            words = instruction.args.split() or [""]
            needs.append({(expand(words[0], global_args) or words[0]).lower()})
            if len(words) >= 3 and words[1].lower() == "as":
                names[words[2].lower()] = len(needs) - 1
        elif not needs and instruction.keyword == "ARG":
            global_args.update((n, v) for n, v in assignments(instruction) if v is not None)
        elif needs:
            sources = re.findall(r"(?:^|[,\s])from=([^,\s]+)", instruction.flags.get("mount", ""))
            if "from" in instruction.flags:
                sources.append(instruction.flags["from"])
            needs[-1].update((expand(src, global_args) or src).lower() for src in sources)
    if not needs:
        return set()
    needed, pending = set(), [len(needs) - 1]
    while pending:
        index = pending.pop()
        if index in needed:
            continue
        needed.add(index)
        for ref in needs[index]:
            target = names.get(ref, int(ref) if ref.isdigit() else None)
            if target is not None and target < len(needs):
                pending.append(target)
    return needed
