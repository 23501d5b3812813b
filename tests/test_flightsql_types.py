"""The Flight SQL type policy: every converted column keeps its values."""

from __future__ import annotations

import datetime as dt
import decimal

import pyarrow as pa
from hypothesis import given, settings
from hypothesis import strategies as st

from flight_server.flightsql.types import client_schema, client_type, conform_batch, conform_reader

TEXT = st.lists(st.one_of(st.none(), st.text(max_size=20)), max_size=30)


@settings(max_examples=60, deadline=None)
@given(values=TEXT)
def test_types_string_views_and_large_strings_round_trip(values: list[str | None]) -> None:
    for source in (pa.string_view(), pa.large_string()):
        batch = pa.record_batch([pa.array(values, source)], names=["s"])
        out = conform_batch(batch, client_schema(batch.schema))
        assert out.schema.field("s").type == pa.string()
        assert out.column(0).to_pylist() == values


@settings(max_examples=60, deadline=None)
@given(values=st.lists(st.one_of(st.none(), st.lists(st.integers(-(2**40), 2**40), max_size=4)), max_size=20))
def test_types_large_lists_round_trip(values: list[list[int] | None]) -> None:
    batch = pa.record_batch([pa.array(values, pa.large_list(pa.int64()))], names=["l"])
    out = conform_batch(batch, client_schema(batch.schema))
    assert out.schema.field("l").type == pa.list_(pa.int64())
    assert out.column(0).to_pylist() == values


@settings(max_examples=60, deadline=None)
@given(
    instants=st.lists(
        st.datetimes(min_value=dt.datetime(1970, 1, 2), max_value=dt.datetime(2200, 1, 1), timezones=st.just(dt.UTC)),
        max_size=20,
    )
)
def test_types_zoned_timestamps_keep_their_instants(instants: list[dt.datetime]) -> None:
    zoned = pa.array(instants, pa.timestamp("us", tz="UTC")).cast(pa.timestamp("us", tz="Asia/Tokyo"))
    batch = pa.record_batch([zoned], names=["t"])
    out = conform_batch(batch, client_schema(batch.schema))
    assert out.schema.field("t").type == pa.timestamp("us", tz="UTC")
    assert out.column(0).to_pylist() == instants


def test_types_decimal256_narrows_or_becomes_text() -> None:
    assert client_type(pa.decimal256(20, 2)) == pa.decimal128(20, 2)
    assert client_type(pa.decimal256(60, 0)) == pa.string()
    digits = decimal.Decimal("1" * 55)
    batch = pa.record_batch([pa.array([digits], pa.decimal256(60, 0))], names=["d"])
    assert conform_batch(batch, client_schema(batch.schema)).column(0).to_pylist() == [str(digits)]


def test_types_dictionaries_are_decoded_and_plain_types_pass() -> None:
    batch = pa.record_batch([pa.array(["a", "b", "a"]).dictionary_encode(), pa.array([1, 2, 3])], names=["d", "n"])
    schema = client_schema(batch.schema)
    assert schema.types == [pa.string(), pa.int64()]
    reader = conform_reader(pa.RecordBatchReader.from_batches(batch.schema, [batch]))
    assert reader.read_all().column("d").to_pylist() == ["a", "b", "a"]
    plain = pa.RecordBatchReader.from_batches(schema, [])
    assert conform_reader(plain) is plain
