"""The study's ledger of finished work survives interruption."""

from __future__ import annotations

from interventions.study.ledger import Ledger


def test_ledger_survives_a_line_cut_off_by_an_interruption(tmp_path):
    path = tmp_path / "ledger.jsonl"
    ledger = Ledger(path)
    ledger.add([{"key": "a", "value": 1}, {"key": "b", "value": 2}])
    with path.open("a") as handle:
        handle.write('{"key": "c", "val')  # killed mid-write
    reopened = Ledger(path)
    assert "a" in reopened and "b" in reopened and "c" not in reopened
    reopened.add([{"key": "c", "value": 3}])
    assert Ledger(path)["c"]["value"] == 3 and len(Ledger(path)) == 3
