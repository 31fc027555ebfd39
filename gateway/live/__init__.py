"""Live updates: `callsUpdated` over WebSocket and Server-Sent Events.

hub.py         one poller per (credentials, arguments), its subscribers, the bounds
source.py      the page a poller fetches, through the upstream's cache and pacing
sharing.py     with Redis: one poller per key across replicas (lease, pub/sub)
operations.py  one GraphQL request of either transport, whatever its operation type
ws.py          the graphql-transport-ws subprotocol
sse.py         graphql-sse's distinct connections mode
metrics.py     subscriptions, pollers, polls, updates
"""
