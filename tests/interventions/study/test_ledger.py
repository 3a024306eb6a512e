"""The study's ledger of finished work survives interruption."""

from __future__ import annotations

import pytest

from interventions.study.ledger import Ledger
from probes.core.errors import ToolkitError


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


def test_cut_lines_anywhere_are_redone_and_a_record_missing_a_field_is_refused_with_its_line(tmp_path):
    path = tmp_path / "capitals.jsonl"
    Ledger(path, fields=("response",)).add([{"key": "a", "response": "Paris"}])
    with path.open("ab") as handle:
        handle.write('{"key": "b", "response": "Ber'.encode())  # killed mid-write; a later run starts a new line
    Ledger(path, fields=("response",)).add([{"key": "c", "response": "caf\u00e9 \u2028 Rome"}])
    with path.open("ab") as handle:
        handle.write('{"key": "d", "response": "caf\u00e9'.encode()[:-1])  # killed inside a character
    ledger = Ledger(path, fields=("response",))
    assert sorted(ledger._records) == ["a", "c"] and ledger["c"]["response"] == "caf\u00e9 \u2028 Rome"

    before = path.read_bytes()
    for line in ('{"key": "e"}', '{"response": "no key"}', '["key", "f"]', '{"key": 7, "response": "x"}'):
        path.write_bytes(before + b"\n" + line.encode() + b"\n" + b'{"key": "g", "response": "Oslo"}\n')
        with pytest.raises(ToolkitError) as caught:
            Ledger(path, fields=("response",))
        missing = "'response'" if line == '{"key": "e"}' else "'key'"
        assert str(caught.value) == (
            f"{path} line 5: a ledger record without {missing}, not written by prism: "
            "delete that line (its work is done again) and rerun"
        )


def test_unfinished_chunks_are_cut_the_same_way_whatever_is_on_record(tmp_path):
    ledger = Ledger(tmp_path / "l.jsonl")
    keys = [f"k{i}" for i in range(7)]
    assert ledger.unfinished(keys, 3) == [range(0, 3), range(3, 6), range(6, 7)]
    ledger.add([{"key": key} for key in ("k0", "k1", "k2", "k4", "k6")])
    assert ledger.unfinished(keys, 3) == [range(3, 6)]  # whole, with k4 again: the batches of the first run
    assert ledger.unfinished_keys(keys, 3) == [["k3", "k4", "k5"]]
