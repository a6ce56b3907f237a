"""data.py's `curation.decontaminate`: training rows sharing a 13-word n-gram with an evaluated
instance of a real instance pack (built by HELM, harness/helm/packs.py) or of a raw test split
are dropped, counted per dataset and per scenario; everything else is kept."""

from __future__ import annotations

import json
import random
import sys
from pathlib import Path
from typing import Any

import pytest

from harness.helm.confs import load_conf
from harness.helm.packs import build_pack

TRAIN_DIR = Path(__file__).resolve().parents[2] / "templates" / "train"
sys.path.insert(0, str(TRAIN_DIR))

import data  # noqa: E402
from config import ConfigError, from_dict  # noqa: E402

pytestmark = pytest.mark.helm

VOCAB = [f"w{i}" for i in range(5000)]


def write_jsonl(path: Path, rows: list[dict[str, Any]]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_rows_copied_from_evaluated_instances_are_dropped_and_counted(
    helm_bin: Path, tmp_path: Path
) -> None:
    rng = random.Random(0)

    def words(n: int) -> str:
        return " ".join(rng.choice(VOCAB) for _ in range(n))

    # A local task (the closed stage's format): 12 test questions, 4 in-context examples.
    task = [{"input": words(30), "answer": words(3)} for _ in range(12)]
    task += [{"input": words(30), "answer": words(3), "split": "train"} for _ in range(4)]
    write_jsonl(tmp_path / "mytask.jsonl", task)
    (tmp_path / "stage.conf").write_text(
        'entries: [{description: "local_task:path=mytask.jsonl,num_train_instances=2", '
        'priority: 1, scenario: "mytask"}]\n'
    )
    pack = build_pack(
        load_conf(tmp_path / "stage.conf"), budget=5, data_dir=tmp_path, out=tmp_path / "pack"
    )
    [entry] = pack.entries
    packed = json.loads(
        (tmp_path / "pack" / "scenario_instances" / entry.key / "input_instances.json").read_text()
    )
    evaluated = [i["input"]["text"] for i in packed if i["split"] != "train"]
    shown = [i["input"]["text"] for i in packed if i["split"] == "train"]
    assert len(evaluated) == 5 and len(shown) == 2
    unsampled = [row["input"] for row in task[:12] if row["input"] not in evaluated]

    # A raw test split in HELM's GSM8K layout: JSONL in a file without a suffix.
    gsm = [{"question": words(20), "answer": f"{words(8)}\n#### 4"} for _ in range(4)]
    raw = tmp_path / "gsm"
    raw.mkdir()
    write_jsonl(raw / "gsm_data_test", gsm)

    def row(prompt: str) -> dict[str, str]:
        return {"prompt": prompt, "completion": words(5)}

    first = evaluated[0].split()
    chat = [
        *(row(f"Please answer: {text} thanks") for text in evaluated),  # 5 dropped: mytask
        row(" ".join(first[:12]) + " " + words(10)),  # 12 shared words only: kept
        row(" ".join(first[4:17]) + " " + words(10)),  # 13 shared words: dropped, mytask
        *(row(text) for text in shown),  # the pack's in-context examples: train data, kept
        *(row(text) for text in unsampled),  # test rows the pack did not sample: kept
        *(row(words(25)) for _ in range(10)),  # unrelated: kept
    ]
    math = [
        {"prompt": gsm[0]["question"], "completion": "4"},  # the question: dropped, gsm
        {"prompt": words(15), "completion": gsm[1]["answer"]},  # 8 words + '4' only: kept
        {"prompt": words(15), "completion": "4"},
    ]
    chat_file = write_jsonl(tmp_path / "chat.jsonl", chat)
    math_file = write_jsonl(tmp_path / "math.jsonl", math)
    config = from_dict({
        "track": "4090", "base_model": "./m",
        "datasets": [{"source": str(chat_file), "format": "prompt-completion"},
                     {"source": str(math_file), "format": "prompt-completion"}],
        "curation": {"decontaminate": [str(tmp_path / "pack"), str(raw)]},
    })  # fmt: skip
    examples, report = data.prepare(config, lambda _: False)

    assert report["datasets"][str(chat_file)]["contaminated"] == 6
    assert report["datasets"][str(math_file)]["contaminated"] == 1
    assert report["total"]["contaminated"] == 7
    assert report["contaminated_by_scenario"] == {
        "datasets": {str(chat_file): {"mytask": 6}, str(math_file): {"gsm/gsm_data_test": 1}},
        "total": {"mytask": 6, "gsm/gsm_data_test": 1},
    }
    kept = {e.prompt for e in examples}
    assert len(kept) == len(chat) - 6 + len(math) - 1
    assert not any(text in prompt for text in evaluated for prompt in kept)
    assert set(shown) | set(unsampled) <= kept


def test_a_missing_decontamination_source_is_an_error(tmp_path: Path) -> None:
    rows = write_jsonl(tmp_path / "d.jsonl", [{"prompt": "p", "completion": "c"}])
    config = from_dict({
        "track": "4090", "base_model": "./m",
        "datasets": [{"source": str(rows), "format": "prompt-completion"}],
        "curation": {"decontaminate": [str(tmp_path / "missing")]},
    })  # fmt: skip
    with pytest.raises(ConfigError, match=r"decontaminate: .*missing is no file, folder or pack"):
        data.prepare(config, lambda _: False)
