"""Tenants: who is calling (API keys from Secrets, held as hashes) and what they may do."""
