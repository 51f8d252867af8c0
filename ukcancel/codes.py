"""The UKSSDC's numeric codes, in one place: a product's state and a product's cancel code.

Both are the UKSSDC's own numbers (see the wire contract): they are stored in the service's
records and shown in its answers as the numbers, so the values never change. Being `IntEnum`s,
the members compare, hash and serialise (JSON) as those numbers.
"""

from __future__ import annotations

from enum import IntEnum


class ProductState(IntEnum):
    """A product's state in checkProductStatus.php and listOldJobs.php (negative: will not be built)."""

    CANCELLED_BY_USER = -4
    BUILT_NOTHING = -3  # ran, but built nothing
    FAILED_INTERNAL = -2  # an internal failure
    FAILED_TO_START = -1  # an internal failure
    REQUESTED = 1  # not yet queued
    QUEUED = 2
    RUNNING = 3
    COMPLETED = 4
    WAITING_FOR_POSITION = 5  # the astrometric position only: waiting for the standard position


class CancelCode(IntEnum):
    """A product's code in a canceljob.php reply, kept in the status tuple's detail."""

    CANCELLED = 0
    NOT_CANCELLED_FINISHED = 1
    NO_RECORD = 2
    NOT_CANCELLED_UNKNOWN = 3
    OUTCOME_UNKNOWN = 4


# States in which a product is still going to be built (so can be cancelled).
ACTIVE_STATES = frozenset({
    ProductState.REQUESTED, ProductState.QUEUED, ProductState.RUNNING, ProductState.WAITING_FOR_POSITION
})
# States that end a product without a cancellation, and the one that is a cancellation.
FINISHED_STATES = frozenset({
    ProductState.COMPLETED, ProductState.FAILED_TO_START, ProductState.FAILED_INTERNAL, ProductState.BUILT_NOTHING
})
CANCELLED_STATES = frozenset({ProductState.CANCELLED_BY_USER})
FINAL_STATES = FINISHED_STATES | CANCELLED_STATES
