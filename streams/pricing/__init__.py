"""Pricing: the catalog's rate cards, the organisation's price book over them, and
pricing a chunk of events column by column, exactly.
"""
