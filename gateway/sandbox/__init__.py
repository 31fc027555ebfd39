"""A deterministic stand-in for the retired Catapult v1 call API, with test controls."""

from __future__ import annotations

from gateway.sandbox.app import SandboxOptions, create_sandbox_app
from gateway.sandbox.data import ACCOUNTS, Account, credential_headers

__all__ = ["ACCOUNTS", "Account", "SandboxOptions", "create_sandbox_app", "credential_headers"]
