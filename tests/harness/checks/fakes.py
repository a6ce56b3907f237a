"""Credential-shaped values for tests, generated at run time from a seeded RNG.

None is written in this repository's source (secret scanners, ours included, would flag it), and
tests never print one: they compare booleans (`leaked = value in output; assert not leaked`), so a
failing assertion cannot show the value either.
"""

from __future__ import annotations

import base64
import random
import string
from collections.abc import Callable

_LETTERS = string.ascii_letters
_ALNUM = string.ascii_letters + string.digits
_UPPER_DIGITS = string.ascii_uppercase + string.digits


def _pick(rng: random.Random, alphabet: str, n: int) -> str:
    return "".join(rng.choice(alphabet) for _ in range(n))


def _pem(rng: random.Random) -> str:
    body = base64.encodebytes(rng.randbytes(900)).decode()
    return f"-----BEGIN RSA PRIVATE KEY-----\n{body}-----END RSA PRIVATE KEY-----\n"


# kind (as harness.secrets names it) -> generator of a fresh real-looking value
MAKERS: dict[str, Callable[[random.Random], str]] = {
    "Hugging Face token": lambda rng: "hf_" + _pick(rng, _LETTERS, 34),
    "Weights & Biases API key": lambda rng: _pick(rng, "0123456789abcdef", 40),
    "OpenAI API key": lambda rng: "sk-proj-" + _pick(rng, _ALNUM, 64),
    "GitHub token": lambda rng: "ghp_" + _pick(rng, _ALNUM, 36),
    "AWS access key id": lambda rng: (
        "AKIA" + _pick(rng, string.ascii_uppercase + string.digits, 16)
    ),
    "AWS secret access key": lambda rng: _pick(rng, _ALNUM + "/+", 40),
    "private key": _pem,
}

# How each kind is written where it is used: W&B and AWS secret keys are only recognisable by the
# name they are assigned to (a bare 40-hex value is a git sha).
ASSIGNED_TO = {
    "Hugging Face token": "HF_TOKEN",
    "Weights & Biases API key": "WANDB_API_KEY",
    "OpenAI API key": "OPENAI_API_KEY",
    "GitHub token": "GITHUB_TOKEN",
    "AWS access key id": "AWS_ACCESS_KEY_ID",
    "AWS secret access key": "AWS_SECRET_ACCESS_KEY",
}


def fake(kind: str, seed: int = 0) -> str:
    """A fresh real-looking credential of `kind`."""
    return MAKERS[kind](random.Random(f"{kind}-{seed}"))
