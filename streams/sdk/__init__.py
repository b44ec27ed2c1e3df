"""The producer SDK: what a service adds to publish usage, refuse calls over a cap and
read alerts.
"""
