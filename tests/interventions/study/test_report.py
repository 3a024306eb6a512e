"""``prism report`` on study files of the wrong shape: one line naming the file, the row and the field."""

from __future__ import annotations

import json

import pytest

from prism.cli import main
from tests.directory_holder import snapshot

SETTINGS = {"model": "m", "grid": "smoke", "seed": 0, "judge": "self", "items": {"capitals": 2}, "formats": ["plain"]}
ROW = {
    "task": "capitals",
    "format": "plain",
    "condition": "none[empty]",
    "persona_spec": "none",
    "item_id": "c/1",
    "category": "europe",
    "accuracy": 1.0,
    "margin": 0.5,
    "chance": 0.25,
}


@pytest.mark.parametrize(
    "settings, rows, message",
    [
        (SETTINGS, {"rows": [ROW]}, "items.json: not a list of rows"),
        (SETTINGS, [ROW, 3], "items.json: row 2: not a JSON object"),
        (
            SETTINGS,
            [ROW, {k: v for k, v in ROW.items() if k != "condition"}],
            "items.json: row 2: has no 'condition' field",
        ),
        (SETTINGS, [{**ROW, "item_id": 7}], "items.json: row 1: field 'item_id' is not a string"),
        (SETTINGS, [{**ROW, "margin": "high"}], "items.json: row 1: field 'margin' is not a number"),
        (SETTINGS, [{**ROW, "ratings": [9]}], "items.json: row 1: field 'ratings' is not a JSON object of numbers"),
        ([SETTINGS], [ROW], "study.json: not a JSON object"),
        ({k: v for k, v in SETTINGS.items() if k != "grid"}, [ROW], "study.json: has no 'grid' field"),
        ({**SETTINGS, "items": [2]}, [ROW], "study.json: field 'items' is not a JSON object"),
    ],
)
def test_a_study_file_of_the_wrong_shape_is_refused_in_one_line(tmp_path, settings, rows, message, capsys):
    (tmp_path / "study.json").write_text(json.dumps(settings))
    (tmp_path / "items.json").write_text(json.dumps(rows, indent=2))
    before = snapshot(tmp_path)
    assert main(["report", str(tmp_path)]) == 2
    errors = capsys.readouterr().err.splitlines()
    assert errors == [
        f"prism report: error: {tmp_path}/{message}: rerun `prism study` with the same options to "
        "rewrite it (finished work is kept)"
    ]
    assert snapshot(tmp_path) == before
