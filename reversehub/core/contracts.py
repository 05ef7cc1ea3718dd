"""Names the relay and the hub both rely on, so neither has to import the other.

- :data:`RELAY_ONLINE`: a broker channel. The relay publishes the public URL prefix of a name whose
  first poller just arrived; the hub makes the deliveries waiting for callbacks under that prefix
  due now, instead of at their backoff's end.
- :data:`IN_PROCESS_CLIENT`: the client address of requests the server makes to itself (the hub's
  deliveries and verifications to callbacks on our own relay). The relay gives such requesters no
  ``Requesting-Client`` of their own and the limits never count them.
"""

from __future__ import annotations

RELAY_ONLINE = "relay.online"
IN_PROCESS_CLIENT = ("127.0.0.1", 0)
