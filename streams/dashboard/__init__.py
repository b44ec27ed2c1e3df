"""The spend dashboard: what finance and team leads open instead of writing SQL.

``queries`` reads the ledger (through the rollups), ``pages`` renders the sections as
HTML (charts by :mod:`streams.reports.svg`), ``server`` serves them (in the worker and in
``spendstream ui``) behind :mod:`streams.web_auth`; ``assets/`` holds the page's style
and the small script that refreshes the live sections.
"""
