"""`.dockerignore` matching as Docker does it: Go-style globs plus `**`, `!` re-includes, the last
matching pattern wins, and a pattern matching a folder excludes what is under it."""

from __future__ import annotations

import posixpath
import re


def glob_regex(pattern: str) -> re.Pattern[str]:
    """A Go-style glob (`*` and `?` stop at `/`, `**` crosses folders) as a regex."""
    out: list[str] = []
    index = 0
    while index < len(pattern):
        char = pattern[index]
        if pattern.startswith("**", index):
            index += 2
            if pattern.startswith("/", index):
                index += 1
                out.append("(?:.*/)?")
            else:
                out.append(".*")
            continue
        if char == "*":
            out.append("[^/]*")
        elif char == "?":
            out.append("[^/]")
        elif char == "[":
            end = pattern.find("]", index + 1)
            if end == -1:
                out.append(re.escape(char))
            else:
                body = pattern[index + 1 : end]
                if body.startswith(("!", "^")):
                    body = "^" + body[1:]
                out.append(f"[{body.replace(chr(92), chr(92) * 2)}]")
                index = end
        elif char == "\\" and index + 1 < len(pattern):
            index += 1
            out.append(re.escape(pattern[index]))
        else:
            out.append(re.escape(char))
        index += 1
    return re.compile("".join(out))


class DockerIgnore:
    def __init__(self, text: str) -> None:
        self._rules: list[tuple[bool, re.Pattern[str]]] = []
        for raw in text.splitlines():
            line = raw.strip()
            if not line or line.startswith("#"):
                continue
            include = line.startswith("!")
            pattern = posixpath.normpath(line[1:].strip() if include else line).lstrip("/")
            if pattern and pattern != ".":
                self._rules.append((include, glob_regex(pattern)))

    def excludes(self, path: str) -> bool:
        """Whether a context-relative path is left out of the build context."""
        parents = [path]
        while "/" in parents[-1]:
            parents.append(parents[-1].rsplit("/", 1)[0])
        excluded = False
        for include, regex in self._rules:
            if any(regex.fullmatch(candidate) for candidate in parents):
                excluded = not include
        return excluded
