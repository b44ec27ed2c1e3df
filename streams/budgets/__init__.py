"""Budgets: spend per scope and calendar period, the budgets set on scopes, and the
cap checks that turn spend into cap states and alerts.
"""
