"""Everything about the Catapult v1 REST upstream: the client and what stands in front of it.

service    list_calls / get_call as operations see them: cache -> single flight ->
           lanes -> pacing -> client
cache      the upstream result cache (memory or Redis) with single flight
keys       the keyed hashes everything per caller is filed under, never a credential
entities   every fetched call by id, kept beside that cache, for call(id) and federation
           without a refetch
redis      the guarded Redis connection the cache, entity view and pacing share
pacing     each account's requests spaced to the upstream's rate limit
lanes      which pacing lane a credential pair takes (the account's, a probe lane, none)
client     the REST client: errors mapped in one place, retries inside the deadline
tally      one operation's cache look-ups and HTTP attempts, handed down with each ask
routes     the REST paths
next_page  the page a `Link rel="next"` names, checked, as a ListQuery (never a URL)
transport  httpx's transport interface over aiohttp's connection pool
"""
