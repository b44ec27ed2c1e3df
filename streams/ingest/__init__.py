"""Ingest: decode, validate, price and attribute usage messages, in child processes,
and send what cannot be processed to the dead-letter topic with its reason.
"""
