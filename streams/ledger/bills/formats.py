"""The report formats ``spendstream bills import --format`` reads, and reading one file."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from streams.ledger.bills import (
    anthropic,
    aws_cur,
    google_cloud,
    openai,
    openrouter,
    plain_csv,
)
from streams.ledger.bills.lines import BillImportError, BillLine

Reader = Callable[[str, str], list[BillLine]]

FORMATS: dict[str, tuple[Reader, str]] = {
    "openai-costs": (openai.read_costs, "OpenAI organization Costs API pages (JSON)"),
    "openai-usage": (openai.read_usage, "OpenAI organization Usage API completions pages (JSON)"),
    "anthropic-cost": (anthropic.read_cost, "Anthropic Admin API cost report pages (JSON)"),
    "anthropic-usage": (anthropic.read_usage, "Anthropic Admin API messages usage report pages (JSON)"),
    "gcp-billing": (google_cloud.read_export, "Google Cloud billing export rows, Vertex AI / Gemini (JSON)"),
    "aws-cur": (aws_cur.read_cur, "AWS Cost and Usage Report rows, Amazon Bedrock (CSV, CUR 2.0 or legacy)"),
    "openrouter": (openrouter.read_activity, "OpenRouter activity (API JSON or the Activity page's CSV)"),
    "csv": (plain_csv.read_csv, "day,provider,model,account,project,api_key,amount,currency (CSV)"),
}


def read_file(path: Path, fmt: str) -> list[BillLine]:
    """The bill lines of one report file; :class:`BillImportError` says what is wrong and where."""
    if fmt not in FORMATS:
        raise BillImportError(f"unknown format {fmt!r}; use one of {', '.join(FORMATS)}")
    try:
        report = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise BillImportError(f"{path}: cannot read it: {exc}") from exc
    return FORMATS[fmt][0](report, str(path))
