"""What the dashboard shows and does: read-only snapshots of the relay and hub rows, and actions.

Filled in once the relay and hub models have landed (phase 2 of issue 6); until then the tables
are empty and every action finds nothing.
"""

from __future__ import annotations

from typing import Any

from reversehub.services import Services


class ActionError(RuntimeError):
    """An action that cannot be done on the item as it is now (e.g. retry a delivered delivery)."""


async def snapshot(services: Services) -> dict[str, Any]:
    return {"registrations": [], "subscriptions": [], "deliveries": []}


async def retry_delivery(app_state: Any, key: int | str) -> bool:
    return False


async def cancel_delivery(app_state: Any, key: int | str) -> bool:
    return False


async def delete_registration(app_state: Any, key: int | str) -> bool:
    return False


async def delete_subscription(app_state: Any, key: int | str) -> bool:
    return False
