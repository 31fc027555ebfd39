"""catapult-gateway: a GraphQL gateway for the Bandwidth Catapult v1 call-history API."""

__version__ = "0.1.0"
