"""harness.secrets: every credential kind is found and redacted; hashes and placeholders are not.

Credential values are generated at run time (tests/harness/checks/fakes.py) and never printed:
assertions on them compare booleans.
"""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from pathlib import Path

import pytest

from harness.secrets import ELLIPSIS, find_secrets, is_placeholder, mask, redact
from tests.conftest import REPO
from tests.harness.checks.fakes import ASSIGNED_TO, MAKERS, fake

# (template, kind): how credentials show up in code, comments, configs, shells, env files, JSON.
_FORMS = [
    ('login(token="{v}")', "Hugging Face token"),
    ("# my token: {v}", "Hugging Face token"),
    ("huggingface-cli login --token {v}", "Hugging Face token"),
    ("WANDB_API_KEY={v}", "Weights & Biases API key"),
    ('os.environ["WANDB_API_KEY"] = "{v}"', "Weights & Biases API key"),
    ('wandb.login(key="{v}")', "Weights & Biases API key"),
    ("wandb login --relogin {v}", "Weights & Biases API key"),
    ("machine api.wandb.ai\n  login user\n  password {v}", "Weights & Biases API key"),
    ("client = OpenAI(api_key='{v}')", "OpenAI API key"),
    ("git clone https://{v}@github.com/me/repo", "GitHub token"),
    ("aws_access_key_id = {v}", "AWS access key id"),
    ("AWS_SECRET_ACCESS_KEY={v}", "AWS secret access key"),
    ("aws_secret_access_key: '{v}'", "AWS secret access key"),
    ("{v}", "private key"),
]


@pytest.mark.parametrize(("template", "kind"), _FORMS)
def test_finds_each_kind_with_its_line_and_a_redacted_form(template: str, kind: str) -> None:
    value = fake(kind)
    text = "first line\n" + template.format(v=value) + "\nlast line\n"
    found = find_secrets(text)
    assert [s.kind for s in found] == [kind]
    core = value.split("-----")[2].strip() if kind == "private key" else value
    assert found[0].redacted == f"{core[:3]}{ELLIPSIS}{core[-4:]}"
    assert found[0].line == text[: text.index(core)].count("\n") + 1
    leaked = core in redact(text)
    assert not leaked


def test_redact_replaces_every_credential_and_keeps_the_rest() -> None:
    values = {kind: fake(kind, seed=1) for kind in ASSIGNED_TO}
    text = "".join(f"export {name}={values[kind]}\n" for kind, name in ASSIGNED_TO.items())
    out = redact(text)
    for value in values.values():
        leaked = value in out
        assert not leaked
    assert out.splitlines()[0] == f"export HF_TOKEN={mask(values['Hugging Face token'])}"
    assert len(find_secrets(text)) == len(ASSIGNED_TO)
    assert find_secrets(out) == []


def test_private_key_inside_a_json_string_is_redacted_between_its_armor() -> None:
    pem = fake("private key")
    text = json.dumps({"type": "service_account", "private_key": pem})
    out = redact(text)
    body_line = pem.splitlines()[5]
    leaked = body_line in out
    assert not leaked
    assert "-----BEGIN RSA PRIVATE KEY-----" in out
    assert "-----END RSA PRIVATE KEY-----" in out
    assert [s.kind for s in find_secrets(text)] == ["private key"]


def test_code_that_merely_names_a_key_header_is_not_a_key() -> None:
    assert find_secrets('if "-----BEGIN RSA PRIVATE KEY-----" in text:\n    load(text)\n') == []


def _lockfile() -> str:
    digests = [hashlib.sha256(str(i).encode()).hexdigest() for i in range(4)]
    return (
        "torch==2.13.0 \\\n"
        f"    --hash=sha256:{digests[0]} \\\n"
        f"    --hash=sha256:{digests[1]}\n"
        "wandb==0.19.1 \\\n"
        f"    --hash=sha256:{digests[2]}\n"
    )


_NEGATIVES = {
    "lockfile hashes": _lockfile(),
    "image digest": "FROM python:3.11-slim@sha256:" + hashlib.sha256(b"x").hexdigest(),
    "git sha near wandb": "pip install git+https://github.com/wandb/wandb@"
    + hashlib.sha1(b"c").hexdigest(),
    "bare 40-hex": "revision = " + hashlib.sha1(b"r").hexdigest(),
    "base64 data": '"image/png": "'
    + __import__("base64").b64encode(bytes(range(256)) * 40).decode()
    + '"',
    "placeholder env": 'ENV HUGGINGFACE_TOKEN="YOUR_TOKEN"',
    "xxx token": "HF_TOKEN=hf_" + "x" * 34,
    "AWS documentation keys": "aws_access_key_id=AKIAIOSFODNN7EXAMPLE\n"
    "aws_secret_access_key=wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY",
    "sequential token": "hf_abcdefghijklmnopqrstuvwxyzABCDEFGH",
    "env reference": 'token = os.environ["HF_TOKEN"]  # set HF_TOKEN=<token>',
    "uuid": "run_id = 3f2b8c1e-9a4d-4e2b-8f1a-7c6d5e4b3a21",
    "identifier": "hf_quantizer_for_causal_language_models_v2 = None",
}


@pytest.mark.parametrize("name", sorted(_NEGATIVES))
def test_hashes_digests_shas_base64_and_placeholders_are_not_secrets(name: str) -> None:
    assert find_secrets(_NEGATIVES[name]) == []
    assert redact(_NEGATIVES[name]) == _NEGATIVES[name]


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("YOUR_TOKEN", True),
        ('"YOUR_TOKEN"', True),
        ("<token>", True),
        ("<your-hf-token>", True),
        ("xxx", True),
        ("hf_xxxxxxxx", True),
        ("***", True),
        ("changeme", True),
        ("insert_token_here", True),
        ("{{ hf_token }}", True),
        ("", False),
        ("abc123", False),
        ("/run/secrets/hf_token", False),
    ],
)
def test_is_placeholder(value: str, expected: bool) -> None:
    assert is_placeholder(value) is expected


def test_mask_keeps_at_most_three_and_four_characters() -> None:
    assert mask("0123456789abcdefghijXYZW") == "012…XYZW"
    assert mask("short-secret") == ELLIPSIS
    for kind in MAKERS:
        shown = mask(fake(kind)).replace(ELLIPSIS, "")
        assert len(shown) <= 7


def test_loads_as_a_detect_secrets_plugin_file(tmp_path: Path) -> None:
    """The plugins added here work in detect-secrets' own CLI as well."""
    (tmp_path / "a.env").write_text(
        f"HF_TOKEN={fake('Hugging Face token')}\nWANDB_API_KEY={fake('Weights & Biases API key')}\n"
    )
    cli = Path(sys.executable).parent / "detect-secrets"
    out = subprocess.run(
        [str(cli), "scan", "--plugin", str(REPO / "harness" / "secrets.py"), "a.env"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    types = {result["type"] for result in json.loads(out)["results"]["a.env"]}
    assert {"Hugging Face token", "Weights & Biases API key"} <= types
