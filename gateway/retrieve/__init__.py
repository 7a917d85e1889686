"""Retrieving instances from a PACS for WADO-RS: the cache, the transfers, the answers."""
