"""The priced topic's message values: LZ4-compressed Arrow IPC, and the uncompressed values
workers wrote before still read the same way (a priced topic keeps them across an upgrade)."""

from __future__ import annotations

import pyarrow as pa

from streams.events import priced
from tests.test_clickhouse import priced_row


def rows() -> pa.Table:
    return priced.to_table([priced_row(f"e-{n}", user_id=f"u-{n % 7}", input_tokens=1000 + n) for n in range(500)])


def uncompressed(table: pa.Table) -> bytes:
    """A value as workers wrote it before priced messages were compressed."""
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, table.schema) as writer:
        writer.write_table(table)
    return sink.getvalue().to_pybytes()


def test_a_priced_message_is_compressed_and_reads_back_row_for_row() -> None:
    table = rows()
    value = priced.encode(table)
    assert len(value) * 3 < len(uncompressed(table))
    assert priced.decode(value).equals(table)


def test_an_uncompressed_message_of_an_older_worker_still_reads() -> None:
    table = rows()
    assert priced.decode(uncompressed(table)).equals(table)
