"""Amounts and percentages in alert text: exact, so a message never contradicts itself.

An alert saying "spent 0.07 USD, 80% of its 0.05 USD budget" rounds the spend and states
the threshold instead of the share; both mislead. Here an amount is written with every
digit it has (at least two decimals), and a share is computed exactly from the amounts
and rounded only for display, down, to as many decimals as the threshold it is compared
with needs: a share shown as reaching a threshold has reached it, and one that has not
reached it is never shown as if it had.
"""

from __future__ import annotations

from decimal import ROUND_CEILING, ROUND_FLOOR, Decimal

CENT = Decimal("0.01")
HUNDRED = Decimal(100)


def exact(amount: Decimal) -> str:
    """Every significant digit of ``amount``, at least two decimals, with thousands separators:
    0.066 -> ``0.066``, 0.05 -> ``0.05``, 5000 -> ``5,000.00``."""
    amount = Decimal(amount)
    if amount == amount.quantize(CENT):
        return f"{amount.quantize(CENT):,}"
    return f"{amount.normalize():,f}"


def rounded_up(amount: Decimal) -> str:
    """A projection in cents, rounded up (a projection over a limit stays shown over it)."""
    return f"{Decimal(amount).quantize(CENT, ROUND_CEILING):,}"


def percent(part: Decimal, whole: Decimal, *, threshold: Decimal | None = None) -> str:
    """``part`` as a percentage of ``whole``, rounded down to whole percent, or to as many
    decimals as the percentage of ``threshold`` (a fraction) needs (0.805 is 80.5%): ``132%``."""
    if not whole:
        return "n/a"
    share = Decimal(part) * HUNDRED / Decimal(whole)
    places = 0
    if threshold is not None:
        places = max(0, -(Decimal(threshold) * HUNDRED).normalize().as_tuple().exponent)  # type: ignore[operator]
    return f"{share.quantize(Decimal(1).scaleb(-places), ROUND_FLOOR):,f}%"


def threshold_percent(threshold: Decimal) -> str:
    """A threshold fraction as the percentage it is, exactly: 0.8 -> ``80%``, 0.805 -> ``80.5%``."""
    value = (Decimal(threshold) * HUNDRED).normalize()
    return f"{value.quantize(Decimal(1)) if value == value.to_integral_value() else value:f}%"
