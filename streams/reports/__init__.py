"""Reports over the ledger: weekly, chargeback, people and ROI, as text, HTML and the
FOCUS export; the licence inventory and the value ledger they draw on.
"""
