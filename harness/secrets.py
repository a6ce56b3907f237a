"""Find and redact real-looking credentials in text (source files, logs, request bodies).

    from harness.secrets import find_secrets, redact
    for secret in find_secrets(text):
        print(secret.kind, secret.redacted, secret.line)   # e.g. Hugging Face token hf_…AbCd 3
    safe = redact(text)                                    # every credential replaced in place

detect-secrets is the engine: its detectors' patterns are used where it has them (AWS key ids,
GitHub, GitLab, OpenAI, Slack, Stripe, PyPI, SendGrid, Azure, npm), and the credentials it lacks
are added as detect-secrets plugins below (Hugging Face, Weights & Biases, AWS secret keys without
quotes, new-style OpenAI and GitHub tokens, whole PEM private keys). The file loads as a custom
plugin file too: `detect-secrets scan --plugin harness/secrets.py`.

Its own scan loop runs every plugin and filter on every line; here each pattern runs once over the
whole text, and only when a cheap keyword appears in it, which is what makes checking hundreds of
entries fast. Matches then pass a "looks random" test so that placeholders (`hf_xxxx…`, AWS's
documented `…EXAMPLE` keys), sequences and repeated characters are not reported; hashes, digests,
commit shas and base64 data never match a pattern in the first place, because every pattern needs a
vendor prefix or a keyword such as `WANDB_API_KEY=` next to the value.

A full secret value is never part of what this module returns: only its kind, line and a redacted
form keeping at most the first 3 and last 4 characters.
"""

from __future__ import annotations

import itertools
import math
import re
from collections import Counter
from collections.abc import Iterable
from typing import ClassVar, NamedTuple

from detect_secrets.plugins.aws import AWSKeyDetector
from detect_secrets.plugins.azure_storage_key import AzureStorageKeyDetector
from detect_secrets.plugins.base import RegexBasedDetector
from detect_secrets.plugins.github_token import GitHubTokenDetector
from detect_secrets.plugins.gitlab_token import GitLabTokenDetector
from detect_secrets.plugins.npm import NpmDetector
from detect_secrets.plugins.openai import OpenAIDetector
from detect_secrets.plugins.pypi_token import PypiTokenDetector
from detect_secrets.plugins.sendgrid import SendGridDetector
from detect_secrets.plugins.slack import SlackDetector
from detect_secrets.plugins.stripe import StripeDetector

__all__ = ["Secret", "find_secrets", "is_placeholder", "looks_random", "mask", "redact"]

ELLIPSIS = "…"
_HEAD, _TAIL = 3, 4
# Shorter values would be mostly revealed by head + tail, so they are masked entirely.
_MIN_LEN_TO_SHOW = 20


class Secret(NamedTuple):
    """One credential found in a text: never holds the value itself."""

    kind: str
    redacted: str
    line: int  # 1-based line of the first character of the value


# detect-secrets plugins for what it lacks.
_E = r"(?![A-Za-z0-9_-])"


def _prefixed(prefix: str, body: str) -> re.Pattern[str]:
    """`prefix` + `body` as a whole token, not inside a longer run of token characters (URL-safe
    base64). The boundary is checked after the literal prefix: a pattern starting with a literal
    is searched for many times faster by `re` than one starting with a lookbehind."""
    escaped = re.escape(prefix)
    return re.compile(rf"({escaped}(?<![A-Za-z0-9_-]{escaped}){body}){_E}")


def _ci(word: str) -> str:
    """A case-insensitive literal as character classes (faster than re.IGNORECASE here)."""
    return "".join(f"[{c.lower()}{c.upper()}]" if c.isalpha() else re.escape(c) for c in word)


def _assigned(name: str, value: str) -> re.Pattern[str]:
    """`NAME = value`, `NAME: "value"`, `["NAME"] = 'value'`, `ENV NAME value` and the like."""
    return re.compile(rf"""{name}["']?\]?[ \t]*(?:=|:=|=>|::|:|[ \t]+)[ \t]*["']?{value}""")


class HuggingFaceTokenDetector(RegexBasedDetector):
    """Hugging Face user access tokens (`hf_…`) and legacy organization tokens (`api_org_…`)."""

    secret_type = "Hugging Face token"
    denylist: ClassVar[list[re.Pattern[str]]] = [
        _prefixed("hf_", r"[A-Za-z0-9]{30,40}"),
        _prefixed("api_org_", r"[A-Za-z0-9]{30,40}"),
    ]


class WandbApiKeyDetector(RegexBasedDetector):
    """Weights & Biases API keys: 40 hex digits, only where the context says W&B (else a sha)."""

    secret_type = "Weights & Biases API key"
    _key = r"((?:local-)?[0-9a-f]{40})(?![0-9A-Za-z])"
    denylist: ClassVar[list[re.Pattern[str]]] = [
        _assigned(f"{_ci('wandb')}[_-]?(?:{_ci('api')}[_-]?)?{_ci('key')}", _key),
        re.compile(r"wandb\.login\([^)\n]*?\bkey\s*=\s*['\"]" + _key),
        re.compile(r"wandb\s+login(?:[ \t]+--?[\w-]+(?:=\S+)?)*[ \t]+['\"]?" + _key),
        # ~/.netrc, as `wandb login` writes it
        re.compile(r"machine\s+api\.wandb\.ai\s+login\s+\S+\s+password\s+" + _key),
    ]


class AwsSecretAccessKeyDetector(RegexBasedDetector):
    """AWS secret access keys assigned to their usual names, quoted or not (.env, credentials)."""

    secret_type = "AWS secret access key"
    denylist: ClassVar[list[re.Pattern[str]]] = [
        _assigned(
            f"{_ci('aws')}[_-]?{_ci('secret')}[_-]?(?:{_ci('access')}[_-]?)?{_ci('key')}",
            r"([A-Za-z0-9/+]{40})(?![A-Za-z0-9/+=])",
        ),
    ]


class OpenAIProjectKeyDetector(RegexBasedDetector):
    """OpenAI project, service-account and admin keys, which may lack the legacy `T3BlbkFJ` mark."""

    secret_type = "OpenAI API key"
    denylist: ClassVar[list[re.Pattern[str]]] = [
        _prefixed("sk-", r"(?:proj|svcacct|admin)-[A-Za-z0-9_-]{40,250}"),
    ]


class GitHubFineGrainedTokenDetector(RegexBasedDetector):
    """GitHub fine-grained personal access tokens."""

    secret_type = "GitHub token"
    denylist: ClassVar[list[re.Pattern[str]]] = [
        _prefixed("github_pat_", r"[A-Za-z0-9_]{60,255}"),
    ]


class PemPrivateKeyDetector(RegexBasedDetector):
    """A PEM private key with its body, also inside a JSON string (`\\n` escapes).

    detect-secrets' own detector flags the `BEGIN … PRIVATE KEY` header alone, which code that
    merely handles keys contains too; the body is what is secret, and what gets redacted.
    """

    secret_type = "private key"
    _body = r"[A-Za-z0-9+/=\s\\:,.-]"
    denylist: ClassVar[list[re.Pattern[str]]] = [
        re.compile(
            r"-----BEGIN (?:[A-Z0-9]+ )*PRIVATE KEY(?: BLOCK)?-----"
            rf"({_body}{{64,}}?)(?=-----END |[^A-Za-z0-9+/=\s\\:,.-]|\Z)"
        ),
    ]


class _Detector(NamedTuple):
    """One pattern, the group holding the value, and lowercase keywords that must occur first."""

    kind: str
    pattern: re.Pattern[str]
    group: int
    keywords: tuple[str, ...]


def _each(
    kind: str, patterns: Iterable[re.Pattern[str]], keywords: tuple[str, ...]
) -> list[_Detector]:
    """Every pattern of a plugin, valued by its first group if it has one (else the whole match)."""
    return [_Detector(kind, pattern, 1 if pattern.groups else 0, keywords) for pattern in patterns]


_HF, _WANDB = HuggingFaceTokenDetector.denylist, WandbApiKeyDetector.denylist
_AWS = AWSKeyDetector.denylist
_ALWAYS: tuple[str, ...] = ()

# Keywords are lowercase substrings without which a pattern cannot match, tested first for the
# patterns that `re` scans slowly; a pattern starting with a literal is as fast as the test.
_DETECTORS: tuple[_Detector, ...] = (
    *_each("Hugging Face token", _HF, _ALWAYS),
    *_each("Weights & Biases API key", _WANDB[:1], ("wandb_key", "wandb-key", "wandbkey",
                                                    "wandb_api", "wandb-api", "wandbapi")),
    *_each("Weights & Biases API key", _WANDB[1:], _ALWAYS),
    *_each("OpenAI API key", OpenAIDetector.denylist, _ALWAYS),
    *_each("OpenAI API key", OpenAIProjectKeyDetector.denylist, _ALWAYS),
    # detect-secrets' GitHub pattern groups the prefix alone: the value is the whole match.
    _Detector("GitHub token", GitHubTokenDetector.denylist[0], 0, _ALWAYS),
    *_each("GitHub token", GitHubFineGrainedTokenDetector.denylist, _ALWAYS),
    *_each("AWS access key id", _AWS[:1], _ALWAYS),
    *_each("AWS secret access key", _AWS[1:], ("aws",)),
    *_each("AWS secret access key", AwsSecretAccessKeyDetector.denylist,
           ("aws_secret", "aws-secret", "awssecret")),
    *_each("private key", PemPrivateKeyDetector.denylist, _ALWAYS),
    *_each("GitLab token", GitLabTokenDetector.denylist, _ALWAYS),
    *_each("Slack token", SlackDetector.denylist, ("xox", "hooks.slack.com")),
    *_each("Stripe key", StripeDetector.denylist, ("k_live_",)),
    *_each("PyPI token", PypiTokenDetector.denylist, _ALWAYS),
    *_each("SendGrid API key", SendGridDetector.denylist, _ALWAYS),
    *_each("Azure storage key", AzureStorageKeyDetector.denylist, _ALWAYS),
    *_each("npm token", NpmDetector.denylist, _ALWAYS),
)  # fmt: skip

# What "real-looking" means.
_PLACEHOLDER_MARKERS = (
    "example",
    "placeholder",
    "redacted",
    "dummy",
    "changeme",
    "your_",
    "your-",
    "yourtoken",
    "yourkey",
    "xxxx",
    "****",
    "....",
)
_PLACEHOLDER_VALUE = re.compile(
    r"""(?ix)
    (?:hf_|sk-|ghp_|wandb_)?(?:x{3,}|\*{3,}|\.{3,}|…)   # hf_xxxx, ***, ...
    | <[^<>\n]{1,60}>                               # <token>, <your-hf-token>
    | \{\{[^{}\n]{1,60}\}\}                         # {{ token }} (templates)
    | (?:your|my)[\w-]*                             # YOUR_TOKEN, your-api-key
    | [\w-]*_here | insert[\w-]* | (?:change|replace)[_-]?me | todo | tbd | fixme
    | dummy[\w-]* | fake[\w-]* | placeholder[\w-]* | redacted
    """
)
_MIN_ENTROPY = 3.0


def is_placeholder(value: str) -> bool:
    """Whether a value is an obvious stand-in for a credential (`YOUR_TOKEN`, `<token>`, `xxx`)."""
    return bool(_PLACEHOLDER_VALUE.fullmatch(value.strip().strip("'\"")))


def _shannon_entropy(value: str) -> float:
    counts = Counter(value)
    return -sum(n / len(value) * math.log2(n / len(value)) for n in counts.values())


def looks_random(value: str) -> bool:
    """Random enough to be a real credential: not a placeholder, a run, or a sequence."""
    lowered = value.lower()
    if any(marker in lowered for marker in _PLACEHOLDER_MARKERS):
        return False
    if re.search(r"(.)\1{5}", value):
        return False
    steps = sum(1 for a, b in itertools.pairwise(lowered) if ord(b) - ord(a) == 1)
    if steps > len(value) // 3:
        return False
    return _shannon_entropy(value) >= _MIN_ENTROPY


def mask(value: str) -> str:
    """The redacted form of a value: at most its first 3 and last 4 characters."""
    if len(value) < _MIN_LEN_TO_SHOW:
        return ELLIPSIS
    return f"{value[:_HEAD]}{ELLIPSIS}{value[-_TAIL:]}"


# Scanning.
class _Match(NamedTuple):
    kind: str
    start: int
    end: int


def _trim(text: str, start: int, end: int) -> tuple[int, int]:
    """Shrink a span past surrounding whitespace and JSON `\\n` escapes (PEM bodies carry them)."""
    while start < end:
        if text[start].isspace():
            start += 1
        elif text.startswith("\\n", start) or text.startswith("\\r", start):
            start += 2
        else:
            break
    while end > start:
        if text[end - 1].isspace():
            end -= 1
        elif end - start >= 2 and text[end - 2 : end] in ("\\n", "\\r"):
            end -= 2
        else:
            break
    return start, end


def _matches(text: str) -> list[_Match]:
    lowered = text.lower()
    present: dict[tuple[str, ...], bool] = {}
    found: list[_Match] = []
    for detector in _DETECTORS:
        keywords = detector.keywords
        if keywords and keywords not in present:
            present[keywords] = any(keyword in lowered for keyword in keywords)
        if keywords and not present[keywords]:
            continue
        for m in detector.pattern.finditer(text):
            start, end = _trim(text, *m.span(detector.group))
            if looks_random(text[start:end]):
                found.append(_Match(detector.kind, start, end))
    # Two patterns may find the same value (detect-secrets' and ours): keep the earliest, longest.
    found.sort(key=lambda match: (match.start, -match.end))
    kept: list[_Match] = []
    for match in found:
        if not kept or match.start >= kept[-1].end:
            kept.append(match)
    return kept


def find_secrets(text: str) -> list[Secret]:
    """Every real-looking credential in `text`, in order, as kind + redacted form + line."""
    return [
        Secret(
            match.kind, mask(text[match.start : match.end]), text.count("\n", 0, match.start) + 1
        )
        for match in _matches(text)
    ]


def redact(text: str) -> str:
    """`text` with every real-looking credential replaced by its redacted form."""
    pieces: list[str] = []
    position = 0
    for _, start, end in _matches(text):
        pieces += [text[position:start], mask(text[start:end])]
        position = end
    pieces.append(text[position:])
    return "".join(pieces)
