"""Everything about the Catapult v1 REST upstream: the client and what stands in front of it.

service    the upstream as operations see it: cache -> single flight -> pacing -> client
cache      the upstream result cache (memory or Redis) with single flight
pacing     each account's requests spaced to the upstream's rate limit
client     the REST client: retries inside the deadline, status -> error mapping
transport  httpx's transport interface over aiohttp's connection pool
"""
