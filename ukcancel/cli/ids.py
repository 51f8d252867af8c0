"""Naming a cancel command or a batch on the command line: its full id, or a unique start of it.

Ids are 32 hexadecimal characters. A full id is looked up directly (a command first, then a
batch). A shorter start is matched against what ``GET /v1/cancellations`` lists for this token
(every page): the commands' ids and the ids of the batches they belong to. A batch that has no
items yet (an ``--all-active`` batch still expanding) is found only by its full id.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

import click

from ukcancel.client import Client, ServiceError, not_found

COMMAND, BATCH = "command", "batch"
FULL_ID = re.compile(r"^[0-9a-f]{32}$")
HEX = re.compile(r"^[0-9a-f]+$")
# The largest page the listing gives; fewer round trips when walking every command.
LISTING_PAGE = 200
SHOWN_MATCHES = 5


@dataclass(frozen=True)
class Target:
    """What an ID argument named: a command or a batch, by its full id."""

    kind: str
    id: str


def resolve(client: Client, text: str) -> Target:
    """The one command or batch `text` names; a usage error (exit 2) when none or several match."""
    wanted = text.strip().lower()
    if FULL_ID.match(wanted):
        return by_full_id(client, wanted)
    if not wanted:
        raise click.BadParameter("give an id, or the start of one", param_hint="ID")
    matches = matching(client, wanted)
    if len(matches) == 1:
        return matches[0]
    if not matches:
        shape = "" if HEX.match(wanted) else " (ids are 32 hexadecimal characters)"
        raise click.BadParameter(f"no cancel command or batch visible to this token has an id starting with "
                                 f"{text!r}{shape}", param_hint="ID")
    listed = ", ".join(f"{target.kind} {target.id}" for target in matches[:SHOWN_MATCHES])
    more = f" and {len(matches) - SHOWN_MATCHES} more" if len(matches) > SHOWN_MATCHES else ""
    raise click.BadParameter(f"{text!r} is ambiguous: it starts {len(matches)} ids ({listed}{more}); "
                             "give more characters", param_hint="ID")


def resolve_plan(client: Client, text: str) -> str:
    """The plan `text` names: its full id, or the start of one of the caller's plans
    (`GET /v1/plans`); a usage error (exit 2) when none or several match."""
    wanted = text.strip().lower()
    if FULL_ID.match(wanted):
        return wanted
    if not wanted:
        raise click.BadParameter("give a plan id, or the start of one", param_hint="ID")
    matches = sorted(plan["id"] for plan in client.list_plans() if plan["id"].startswith(wanted))
    if len(matches) == 1:
        return matches[0]
    if not matches:
        shape = "" if HEX.match(wanted) else " (ids are 32 hexadecimal characters)"
        raise click.BadParameter(f"none of your plans has an id starting with {text!r}{shape}", param_hint="ID")
    listed = ", ".join(matches[:SHOWN_MATCHES])
    more = f" and {len(matches) - SHOWN_MATCHES} more" if len(matches) > SHOWN_MATCHES else ""
    raise click.BadParameter(f"{text!r} is ambiguous: it starts {len(matches)} plan ids ({listed}{more}); "
                             "give more characters", param_hint="ID")


def by_full_id(client: Client, identifier: str) -> Target:
    """A full id: a command if there is one, else a batch; else an error (exit 1)."""
    for kind, fetch in ((COMMAND, client.get), (BATCH, lambda i: client.get_batch(i, limit=1))):
        try:
            fetch(identifier)
        except ServiceError as exc:
            if not not_found(exc):
                raise
            continue
        return Target(kind, identifier)
    raise click.ClickException(f"no cancel command or batch {identifier} visible to this token")


def matching(client: Client, prefix: str) -> list[Target]:
    """Every command, and every batch of a listed command, whose id starts with `prefix`."""
    found: set[Target] = set()
    for command in client.list(limit=LISTING_PAGE):
        found.update(targets_of(command, prefix))
    return sorted(found, key=lambda target: (target.kind, target.id))


def targets_of(command: dict[str, Any], prefix: str) -> list[Target]:
    targets = []
    if str(command.get("id", "")).startswith(prefix):
        targets.append(Target(COMMAND, command["id"]))
    batch_id = command.get("batch_id")
    if batch_id and str(batch_id).startswith(prefix):
        targets.append(Target(BATCH, batch_id))
    return targets
