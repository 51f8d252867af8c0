"""`ukcancel batch FILE`: every form of batch file is validated up front, item by item.

A malformed file is a usage error (exit 2) that names each bad item by index (and CSV line) and
says what is wrong with it; nothing reaches the service.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from ukcancel import keys

Served = Any  # the fixtures of tests/cli/conftest.py
CliRun = Any


def commands_stored(api: Served) -> int:
    return api.runtime.connection.zcard(keys.ALL_COMMANDS)


@pytest.mark.parametrize(
    ("name", "content", "messages"),
    [
        # The user trial's files: bare numbers, null, numbers as strings.
        ("ints.json", "[1001, 1002]", ['item 0: a bare job id; write {"job_id": 1001}', "item 1: a bare job id"]),
        ("null.json", "[null]", ['item 0: expected {"job_id": ..., "products": ...} or [job_id, products], not null']),
        ("string.json", '["1001"]', ['item 0: expected {"job_id": ..., "products": ...} or [job_id, products], '
                                     'not a string ("1001")']),
        ("bool.json", "[true]", ["item 0: expected", "not true"]),
        ("pair.json", "[[1001]]", ["item 0: a [job_id, products] pair needs 2 elements; this list has 1"]),
        ("fields.json", json.dumps({"items": [{"job_id": 1001}, {"job_id": "1002"}, {"job_id": 1003, "products": []},
                                              {"job_id": 0}, {"job_id": 1004, "prodcts": "all"}]}),
         ['item 1, job_id = "1002": Not a valid integer.', "item 2, products = []: Must name at least one product.",
          "item 3, job_id = 0: Must be greater than or equal to 1", 'item 4, prodcts = "all": Unknown field.']),
        ("pair-fields.json", '[[1001, ["Nonsense"]], [true, "all"]]',
         ["item 0, products = [\"Nonsense\"]: unknown product 'Nonsense'", "item 1, job_id = true: Not a valid integer."]),
        ("top-key.json", json.dumps({"items": [{"job_id": 1001}], "user_id": "astro@example.org"}),
         ["unknown key 'user_id' at the top of the file", "--user"]),
        ("no-items.json", json.dumps({"jobs": [1001]}), ['a JSON object must hold "items"']),
        ("items-not-list.json", json.dumps({"items": 1001}), ['"items": Not a valid list.']),
        ("scalar.json", "1001", ['expected a JSON list of items or {"items": [...]}, not a number (1001)']),
        ("empty.json", "[]", ["the file has no items"]),
        ("too-many.json", json.dumps([{"job_id": 1001}] * 10_001), ["10,001 items; a batch holds at most 10,000"]),
        # CSV lines are counted in the file, blank lines included.
        ("blank-line.csv", "job_id,products\n1001,lc\n\n12x,lc\n-3,all\n",
         ['item 1 (line 4), job_id = "12x": Not a valid integer.', "item 2 (line 5), job_id = -3: Must be greater"]),
        ("header.csv", "job_id,job_id\n1001,1002\n", ["the CSV header must be job_id,products"]),
        # Hostile sizes: a clear message and exit 2, not a traceback.
        ("huge-id.csv", "job_id,products\n" + "9" * 5000 + ",lc\n", ["item 0 (line 2), job_id = ", "Not a valid integer."]),
        ("huge-id.json", "[[" + "9" * 5000 + ', "lc"]]', ["not valid JSON", "4300"]),
        ("huge-cell.csv", "job_id,products\n1001," + "l" * (128 * 1024 + 10) + "\n", ["line 2: field larger than field limit"]),
    ],
)
def test_a_malformed_batch_file_names_each_bad_item_and_submits_nothing(
    served_without_worker: Served, ukcancel: CliRun, tmp_path: Path, name: str, content: str, messages: list[str]
) -> None:
    path = tmp_path / name
    path.write_text(content)
    result = ukcancel(served_without_worker, "batch", str(path))
    assert result.exit_code == 2, result.output
    for message in messages:
        assert message in result.output
    assert "Traceback" not in result.output
    assert commands_stored(served_without_worker) == 0


def test_many_bad_items_are_reported_by_the_first_twenty_and_a_count(
    served_without_worker: Served, ukcancel: CliRun, tmp_path: Path
) -> None:
    path = tmp_path / "bad.json"
    path.write_text(json.dumps([{"job_id": "x"}] * 50))
    result = ukcancel(served_without_worker, "batch", str(path))
    assert result.exit_code == 2
    assert "item 19, job_id" in result.output and "item 20, job_id" not in result.output
    assert "and 30 more problems" in result.output


def test_every_accepted_form_is_submitted_as_the_service_reads_it(served: Served, ukcancel: CliRun,
                                                                   tmp_path: Path) -> None:
    """Objects with and without products, [job_id, products] pairs and short names go through."""
    path = tmp_path / "jobs.json"
    path.write_text(json.dumps([[1001, ["lc"]], {"job_id": 1003}, [1002, "all"]]))
    result = ukcancel(served, "batch", str(path), "--wait", "--json")
    assert result.exit_code == 0, result.output
    view = json.loads(result.output)
    assert [(item["job_id"], item["products"]) for item in view["items"]] == [
        (1001, ["LightCurve"]), (1003, "all"), (1002, "all")
    ]
    assert view["items"][0]["result"] == [1, {"LightCurve": {"code": 0, "text": "Job cancelled OK"}}]
