"""What the dashboard shows and does, through the admin methods of the packages that own the rows.

Relay names come from :mod:`relay.admin`, subscriptions and deliveries from :mod:`hub.admin`; the
four actions are theirs too (deleting a name goes through the relay's own delete, so its polls end
with 410). This module only picks the package and turns a path parameter into its key.
"""

from __future__ import annotations

from typing import Any

from hub import admin as hub_admin
from relay import admin as relay_admin

LIMIT = 200  # rows per table: the dashboard is a view of what needs attention, not an export

ActionError = hub_admin.ActionError


async def snapshot(app_state: Any) -> dict[str, Any]:
    services = app_state.services
    return {
        "registrations": await relay_admin.names(app_state.relay, LIMIT),
        "subscriptions": await hub_admin.subscriptions(services, LIMIT),
        "deliveries": await hub_admin.deliveries(services, LIMIT),
    }


def _row_id(key: str) -> int | None:
    # Row ids are 64-bit integers: a longer run of digits names no row (and would overflow the driver).
    return int(key) if key.isascii() and key.isdigit() and len(key) <= 18 else None  # isdigit alone takes "²"


async def retry_delivery(app_state: Any, key: str) -> bool:
    row = _row_id(key)
    return row is not None and await hub_admin.retry_delivery(app_state.services, row)


async def cancel_delivery(app_state: Any, key: str) -> bool:
    row = _row_id(key)
    return row is not None and await hub_admin.cancel_delivery(app_state.services, row)


async def delete_subscription(app_state: Any, key: str) -> bool:
    row = _row_id(key)
    return row is not None and await hub_admin.delete_subscription(app_state.services, row)


async def delete_registration(app_state: Any, key: str) -> bool:
    return await relay_admin.delete_name(app_state.relay, key)
