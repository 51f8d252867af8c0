"""Batch files for `ukcancel batch`: read, and validate every item before anything is sent.

Accepted forms (the README's "Batch files"):

- CSV with the header ``job_id,products`` (``products`` optional): products ``;``-separated
  long or short names, or ``all``; an empty cell or a missing column is ``all``.
- JSON: a list of items, or ``{"items": [...]}``. An item is ``{"job_id": ..., "products": ...}``
  (``products`` optional, default ``all``) or a ``[job_id, products]`` pair, the shape the
  Python client's ``submit_batch`` takes.

Each item is checked with the API's own `CancellationRequestSchema` (job_id and products), so
the file is refused here, naming each bad item, for exactly what the service would refuse, and
nothing is submitted.
"""

from __future__ import annotations

import csv
import json
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import click
from marshmallow import RAISE, Schema, ValidationError, fields, validate

from ukcancel import products as product_names
from ukcancel.service.batch_schemas import ITEM_FIELDS, MAX_ITEMS, BatchItemRequestSchema

CSV_HEADER = ("job_id", "products")
INTEGER = re.compile(r"^[+-]?[0-9]+$")
MAX_INTEGER_CHARS = 20  # longer than any JobID, shorter than anything costly to convert
# A file with thousands of bad lines is reported by its first ones; the count says how many more.
MAX_REPORTED_ERRORS = 20
ITEM_SCHEMA = BatchItemRequestSchema(only=ITEM_FIELDS)


def describe(value: Any) -> str:
    """A JSON value as a user would name it in an error: its JSON type and, briefly, the value."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return f"a string ({json.dumps(value)[:40]})"
    if isinstance(value, (int, float)):
        return f"a number ({value})"
    return f"a JSON {type(value).__name__}"


def as_item_mapping(value: Any) -> Mapping[str, Any] | None:
    """An item in its mapping form ({"job_id", "products"}), or None if it has neither form."""
    if isinstance(value, Mapping):
        return value
    if isinstance(value, list) and len(value) == 2:
        return {"job_id": value[0], "products": value[1]}
    return None


class FileItem(fields.Field):
    """One item of a batch file, validated as ``POST /v1/batches`` validates it."""

    default_error_messages = {
        "null": 'expected {{"job_id": ..., "products": ...}} or [job_id, products], not null',
        "type": 'expected {{"job_id": ..., "products": ...}} or [job_id, products], not {what}',
        "pair": "a [job_id, products] pair needs 2 elements; this list has {count}",
        "bare": 'a bare job id; write {{"job_id": {value}}} (products default to all) or [{value}, "all"]',
    }

    def _deserialize(self, value: Any, attr: str | None, data: Any, **kwargs: Any) -> dict[str, Any]:
        if isinstance(value, int) and not isinstance(value, bool):
            raise self.make_error("bare", value=value)
        if isinstance(value, list) and len(value) != 2:
            raise self.make_error("pair", count=len(value))
        item = as_item_mapping(value)
        if item is None:
            raise self.make_error("type", what=describe(value))
        return ITEM_SCHEMA.load(item)  # its errors name the field: {"job_id": ["Not a valid integer."]}


class BatchFileSchema(Schema):
    """A whole batch file in its ``{"items": [...]}`` form."""

    class Meta:
        unknown = RAISE

    items = fields.List(FileItem(), required=True, validate=validate.Length(min=1, max=MAX_ITEMS))


BATCH_FILE_SCHEMA = BatchFileSchema()


@dataclass(frozen=True)
class BatchFile:
    """Validated items, ready to send, and how to name item i in a message (its CSV line)."""

    items: list[dict[str, Any]]
    name_item: Callable[[int], str]


def read_batch_file(path: Path) -> BatchFile:
    """The items of a .csv or .json file; any problem is a `click.BadParameter` naming the item."""
    suffix = path.suffix.lower()
    if suffix not in (".csv", ".json"):
        raise file_error(f"{path.name}: expected a .csv or .json file")
    try:
        text = path.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as exc:
        raise file_error(f"cannot read {path}: {exc}") from None
    if suffix == ".csv":
        document, lines = csv_document(text)
        return validated(document, lambda i: f"item {i} (line {lines[i]})")
    return validated(json_document(text), lambda i: f"item {i}")


def file_error(message: str) -> click.BadParameter:
    return click.BadParameter(message, param_hint="FILE")


def csv_document(text: str) -> tuple[dict[str, Any], list[int]]:
    """``{"items": [...]}`` from CSV text, and the file line of each item (blank lines are skipped).

    A bad header or a row with too many cells is refused here; the cells' values by the schema.
    """
    rows = csv.reader(text.splitlines())
    try:
        return _csv_items(rows)
    except csv.Error as exc:  # e.g. a cell over the csv module's field size limit (128 KiB)
        raise file_error(f"line {rows.line_num}: {exc}") from None


def _csv_items(rows: Any) -> tuple[dict[str, Any], list[int]]:
    header = [cell.strip().lower() for cell in next(rows, [])]
    if "job_id" not in header or not set(header) <= set(CSV_HEADER) or len(set(header)) != len(header):
        raise file_error(f"the CSV header must be {','.join(CSV_HEADER)} (products optional), not "
                         f"{','.join(header) or 'empty'}")
    items: list[dict[str, Any]] = []
    lines: list[int] = []
    for line, row in enumerate(rows, start=2):
        if not any(cell.strip() for cell in row):
            continue
        if len(row) > len(header):
            raise file_error(f"line {line}: {len(row)} cells for a {len(header)}-column header")
        cells = dict(zip(header, (cell.strip() for cell in row)))
        lines.append(line)
        items.append({"job_id": csv_job_id(cells.get("job_id", "")), "products": csv_products(cells.get("products", ""))})
    if not items:
        raise file_error("the CSV file has no items")
    return {"items": items}, lines


def csv_job_id(cell: str) -> int | str:
    """An integer cell as a number; anything else stays text, for the schema to refuse by line.

    A number far longer than a JobID (Python refuses to convert one over 4,300 digits) stays text.
    """
    return int(cell) if INTEGER.match(cell) and len(cell) <= MAX_INTEGER_CHARS else cell


def csv_products(cell: str) -> str | list[str]:
    if not cell or cell.lower() == product_names.ALL:
        return product_names.ALL
    return [name.strip() for name in cell.split(";") if name.strip()]


def json_document(text: str) -> dict[str, Any]:
    """``{"items": [...]}`` from JSON text: a list of items, or an object holding one."""
    try:
        document = json.loads(text)
    except (ValueError, RecursionError) as exc:  # ValueError: also a number of over 4,300 digits
        raise file_error(f"not valid JSON: {str(exc)[:200]}") from None
    if isinstance(document, list):
        return {"items": document}
    if isinstance(document, dict):
        if "items" not in document:
            raise file_error('a JSON object must hold "items": [...]')
        return document
    raise file_error(f'expected a JSON list of items or {{"items": [...]}}, not {describe(document)}')


def validated(document: dict[str, Any], name_item: Callable[[int], str]) -> BatchFile:
    """Every item checked at once; all problems (up to `MAX_REPORTED_ERRORS`) in one message."""
    items = document.get("items")
    if isinstance(items, list) and not items:
        raise file_error("the file has no items")
    if isinstance(items, list) and len(items) > MAX_ITEMS:
        raise file_error(f"the file has {len(items):,} items; a batch holds at most {MAX_ITEMS:,} (split the file)")
    try:
        loaded = BATCH_FILE_SCHEMA.load(document)
    except ValidationError as exc:
        raise file_error(error_report(exc.messages, items if isinstance(items, list) else [], name_item)) from None
    return BatchFile(loaded["items"], name_item)


def error_report(messages: Any, items: list[Any], name_item: Callable[[int], str]) -> str:
    """One line per problem: 'item 3 (line 5), job_id = "12x": Not a valid integer.'"""
    lines: list[str] = []
    for key, value in sorted(messages.items(), key=lambda kv: str(kv[0]) != "items"):
        if key != "items":
            lines.append(f'unknown key {key!r} at the top of the file (only "items" belongs there; '
                         f'give user_id as --user)')
        elif isinstance(value, dict):
            for index in sorted(value):
                lines.extend(item_lines(index, value[index], items, name_item))
        else:
            lines.extend(f'"items": {message}' for message in value)
    shown = lines[:MAX_REPORTED_ERRORS]
    if len(lines) > len(shown):
        shown.append(f"... and {len(lines) - len(shown)} more problems")
    return "the file was not submitted:\n" + "\n".join(shown)


def item_lines(index: int, messages: Any, items: list[Any], name_item: Callable[[int], str]) -> list[str]:
    where = name_item(index)
    if isinstance(messages, list):
        return [f"{where}: {message}" for message in messages]
    item = as_item_mapping(items[index]) if index < len(items) else None
    lines = []
    for field_name, field_messages in messages.items():
        value = f" = {json.dumps(item[field_name])[:60]}" if item is not None and field_name in item else ""
        for message in field_messages if isinstance(field_messages, list) else [field_messages]:
            lines.append(f"{where}, {field_name}{value}: {message}")
    return lines
