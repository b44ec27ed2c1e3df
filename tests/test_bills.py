"""Provider bills: each report format read exactly, and imports that add nothing the second time.

The fixtures under tests/fixtures/bills/ are payloads in each provider's documented shape
(OpenAI's organization Costs and Usage API pages, Anthropic's Admin API cost and usage
reports, Google Cloud's billing export rows, AWS Cost and Usage Report rows in CUR 2.0 and
legacy column names, OpenRouter's activity as JSON and CSV, and the plain CSV). Expected
figures are written out by hand from the payloads, never computed by the code under test.
"""

from __future__ import annotations

from datetime import date
from decimal import Decimal
from pathlib import Path

import pytest
from clickhouse_connect.driver.client import Client

from streams.ledger.bills.formats import read_file
from streams.ledger.bills.lines import BillImportError
from streams.ledger.bills.store import store_lines

FIXTURES = Path(__file__).resolve().parent / "fixtures" / "bills"
NOV4 = date(2026, 11, 4)


@pytest.mark.parametrize(
    ("fmt", "name", "expected"),
    [
        # (day, provider, model, project, service tier, amount, currency) per line, in order
        ("openai-costs", "openai_costs.json", [
            (NOV4, "openai", "gpt-4o-2024-08-06", "proj_search", "standard", "1.2345678", "USD"),
            (NOV4, "openai", "gpt-4o-2024-08-06", "proj_search", "standard", "3.5", "USD"),
            (NOV4, "openai", "gpt-4o-mini-2024-07-18", "proj_support", "batch", "0.25", "USD"),
            (date(2026, 11, 5), "openai", "", "proj_search", "", "0.06", "USD"),
        ]),
        ("anthropic-cost", "anthropic_cost.json", [  # amounts are cents in the report
            (NOV4, "anthropic", "claude-sonnet-4-20250514", "wrkspc_01JwQvzr7rXLA5AGx3HKfFUJ", "standard", "1.2378912", "USD"),
            (NOV4, "anthropic", "claude-sonnet-4-20250514", "wrkspc_01JwQvzr7rXLA5AGx3HKfFUJ", "batch", "0.40", "USD"),
            (NOV4, "anthropic", "", "", "", "10.00", "USD"),
        ]),
        ("gcp-billing", "gcp_billing.jsonl", [  # cost plus credits; Compute Engine skipped
            (NOV4, "google", "gemini-2.5-flash", "acme-search", "standard", "0.270012", "USD"),
            (NOV4, "google", "gemini-2.5-flash", "acme-search", "batch", "1.25", "USD"),
        ]),
        ("aws-cur", "aws_cur.csv", [  # S3 skipped; the inference profile's "us." dropped
            (NOV4, "aws", "anthropic.claude-3-5-sonnet-20241022-v2:0", "", "standard", "4.5000000001", "USD"),
            (NOV4, "aws", "anthropic.claude-3-5-sonnet-20241022-v2:0", "", "batch", "1.5", "USD"),
        ]),
        ("aws-cur", "aws_cur_legacy.csv", [
            (NOV4, "aws", "anthropic.claude-3-5-sonnet-20241022-v2:0", "", "standard", "4.5000000001", "USD"),
        ]),
        ("openrouter", "openrouter_activity.json", [
            (NOV4, "openrouter", "openai/gpt-4.1", "", "", "0.015", "USD"),
            (NOV4, "openrouter", "anthropic/claude-sonnet-4", "", "", "2.5", "USD"),
        ]),
        ("openrouter", "openrouter_activity.csv", [(NOV4, "openrouter", "openai/gpt-4.1", "", "", "0.015", "USD")]),
        ("csv", "invoice.csv", [
            (date(2026, 11, 3), "mistral", "mistral-large-latest", "search", "", "12.50", "USD"),
            (date(2026, 11, 3), "mistral", "mistral-large-latest", "search", "", "12.50", "USD"),
            (date(2026, 11, 30), "mistral", "", "", "", "99.000000000001", "USD"),
        ]),
    ],
)
def test_cost_reports_are_read_exactly(fmt: str, name: str, expected: list[tuple]) -> None:
    lines = read_file(FIXTURES / name, fmt)
    got = [(ln.day, ln.provider, ln.model, ln.project, ln.service_tier, ln.amount, ln.currency) for ln in lines]
    assert got == [(*e[:5], Decimal(e[5]), e[6]) for e in expected]
    assert all(ln.kind == "cost" and isinstance(ln.amount, Decimal) for ln in lines)


def test_usage_reports_carry_counts_in_the_ledger_convention() -> None:
    (openai_std, openai_batch) = read_file(FIXTURES / "openai_usage.json", "openai-usage")
    assert (openai_std.kind, openai_std.model, openai_std.api_key, openai_std.service_tier) == (
        "usage", "gpt-4o-2024-08-06", "key_abc", "standard")
    assert (openai_std.requests, openai_std.input_tokens, openai_std.cache_read_tokens, openai_std.output_tokens) == (
        5, 5000, 4000, 1000)
    assert (openai_batch.service_tier, openai_batch.requests) == ("batch", 3)
    (claude,) = read_file(FIXTURES / "anthropic_usage.json", "anthropic-usage")
    # input counts every prompt token: 1500 uncached + 1500 cache writes + 200 cache reads
    assert (claude.input_tokens, claude.cache_write_tokens, claude.cache_read_tokens, claude.output_tokens) == (
        3200, 1500, 200, 500)
    assert claude.amount == 0


@pytest.mark.parametrize(
    ("fmt", "content", "message"),
    [
        ("csv", "day,provider,amount\n2026-11-03,openai,12,5\n", "more fields"),
        ("csv", "day,provider,amount\n2026-11-03,openai,1e\n2026-13-01,openai,1\n", "line 2: amount '1e'"),
        ("csv", "day,provider,amount,colour\n", "unknown column 'colour'"),
        ("csv", "day,provider,amount\n2026-11-03,openai,0.0000000000001\n", "more than 12 decimal places"),
        ("openai-costs", ('{"object": "page", "data": [{"start_time": 1793750400, "results": '
                          '[{"object": "organization.usage.completions.result"}]}]}'), "wrong --format"),
        ("anthropic-cost", "not json", "not JSON"),
        ("aws-cur", "a,b\n1,2\n", "not a Cost and Usage Report"),
    ],
)
def test_bad_reports_name_the_line_and_the_problem(tmp_path: Path, fmt: str, content: str, message: str) -> None:
    path = tmp_path / "report"
    path.write_text(content)
    with pytest.raises(BillImportError, match=message.replace("(", r"\(")):
        read_file(path, fmt)


def test_a_second_import_adds_nothing_and_a_revised_line_replaces_the_old(migrated: Client, tmp_path: Path) -> None:
    def stored() -> list[tuple]:
        return migrated.query(
            "SELECT day, model, amount, count() OVER () FROM provider_costs FINAL ORDER BY day, model, amount"
        ).result_rows

    lines = read_file(FIXTURES / "invoice.csv", "csv")
    first = store_lines(migrated, lines, imported_from="invoice.csv")
    before = stored()
    again = store_lines(migrated, lines, imported_from="invoice.csv")
    assert (first.written, first.unchanged, again.written, again.unchanged) == (3, 0, 0, 3)
    assert stored() == before
    assert migrated.query("SELECT count() FROM provider_costs").result_rows == [(3,)]  # not even written again

    revised = tmp_path / "invoice.csv"
    revised.write_text((FIXTURES / "invoice.csv").read_text().replace("99.000000000001", "98.5"))
    third = store_lines(migrated, read_file(revised, "csv"), imported_from="invoice.csv")
    assert (third.written, third.unchanged) == (1, 2)
    assert migrated.query("SELECT sum(amount), count() FROM provider_costs FINAL").result_rows == [
        (Decimal("123.5"), 3)]
