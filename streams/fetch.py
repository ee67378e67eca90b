"""The ingest consumer's records as aiokafka parses them, without a ``ConsumerRecord`` each.

aiokafka's fetcher parses each fetched record batch in C (``DefaultRecordBatch``, one
``DefaultRecord`` per record), then builds a ``ConsumerRecord`` dataclass per record in Python
(``PartitionRecords._consumer_record``: two ``len`` calls, a tuple of the headers, an eleven-field
``__init__``) and hands it out through a generator behind a Python ``__next__``. On the default
day that is about 1.0-1.3 us per record of the worker's main thread, as much as routing an event
and writing its wire record, for attributes the ingest stage reads five of. The C record has
those five (``offset``, ``timestamp``, ``key``, ``value``, ``headers``); the topic and partition
are the key ``getmany`` files the records under.

:func:`lean_records` makes one consumer's ``getmany`` return the C records themselves. It relies
on aiokafka internals, checked against aiokafka 0.14.0 (pinned), which
``tests/test_streams/test_fetch.py`` pins down so that an upgrade that changes them fails there:

- ``AIOKafkaConsumer._fetcher`` (made by ``start``) keeps what it has fetched per partition in
  ``Fetcher._records``, a dict it only ever fills with ``self._records[tp] = FetchResult(...)``
  (and empties with ``del``, ``clear`` and ``pop``);
- a ``FetchResult`` reads its ``_partition_records`` with ``next(...)``, ``for ... in`` and
  ``.next_fetch_offset`` only;
- ``PartitionRecords`` keeps its ``_tp``, ``_records`` (``MemoryRecords``), ``next_fetch_offset``,
  ``_check_crcs``, ``_isolation_level``, ``_key_deserializer`` and ``_value_deserializer``, and its
  ``_unpack_records`` does what :class:`_LeanPartition` does, but for building ``ConsumerRecord``
  objects and for skipping aborted transactions under ``read_committed``.

Everything else is unchanged: CRCs are still checked (``check_crcs``), control batches and the
records before the fetch offset (inside a compressed batch) still skipped, the position still
moved by each record handed out. A partition fetched under ``read_committed`` or with
deserializers keeps aiokafka's own records; callers read the same five attributes either way.
Faust's consumers in the same process are not touched (no class or module is patched).
"""

from __future__ import annotations

import collections
import logging
from collections.abc import Iterator
from typing import Any, Final

__all__ = ["LEAN_ATTRIBUTES", "lean_records"]

log = logging.getLogger(__name__)

#: What a record handed out by a lean consumer has (aiokafka's ``ConsumerRecord`` has them too).
LEAN_ATTRIBUTES: Final = ("offset", "timestamp", "key", "value", "headers")

_PARTITION_ATTRIBUTES: Final = (
    "_tp",
    "_records",
    "next_fetch_offset",
    "_check_crcs",
    "_isolation_level",
    "_key_deserializer",
    "_value_deserializer",
)


class _LeanPartition:
    """Stands in for a ``PartitionRecords``: iterating it yields the C records of its batches."""

    __slots__ = ("_iterator", "next_fetch_offset")

    def __init__(self, tp: Any, records: Any, fetch_offset: int, check_crcs: bool) -> None:
        self.next_fetch_offset = fetch_offset
        self._iterator = self._unpack(tp, records, check_crcs)

    def __iter__(self) -> Iterator[Any]:
        # ``FetchResult.getall`` iterates with ``for``: handing it the generator itself spares a
        # Python ``__next__`` call per record.
        return self._iterator

    def __next__(self) -> Any:
        return next(self._iterator)

    def _unpack(self, tp: Any, records: Any, check_crcs: bool) -> Iterator[Any]:
        # aiokafka 0.14.0's ``PartitionRecords._unpack_records`` under read_uncommitted, record
        # for record, but for the ``ConsumerRecord`` it builds around each record.
        from aiokafka.errors import CorruptRecordException

        while records.has_next():
            batch = records.next_batch()
            if check_crcs and not batch.validate_crc():
                msg = f"Invalid CRC - {tp}"
                raise CorruptRecordException(msg)
            if batch.is_control_batch:
                self.next_fetch_offset = batch.next_offset
                continue
            for record in batch:
                offset = record.offset
                # A compressed batch may start before the offset fetched: those were read.
                if offset < self.next_fetch_offset:
                    continue
                self.next_fetch_offset = offset + 1
                yield record
            # The batch's own next offset: records removed by compaction at its end are not
            # fetched again.
            self.next_fetch_offset = batch.next_offset


class _LeanResults(collections.OrderedDict):  # type: ignore[type-arg]
    """``Fetcher._records`` that swaps each new result's ``PartitionRecords`` for a lean one."""

    def __setitem__(self, tp: Any, result: Any) -> None:
        partition = getattr(result, "_partition_records", None)
        if partition is not None and _plain(partition):
            result._partition_records = _LeanPartition(
                partition._tp, partition._records, partition.next_fetch_offset, partition._check_crcs
            )
        super().__setitem__(tp, result)


def _plain(partition: Any) -> bool:
    """True for a fresh ``PartitionRecords`` with nothing a lean partition would leave out."""
    from aiokafka.consumer.fetcher import READ_UNCOMMITTED, PartitionRecords

    return (
        type(partition) is PartitionRecords
        and partition._isolation_level == READ_UNCOMMITTED
        and partition._key_deserializer is None
        and partition._value_deserializer is None
    )


def lean_records(consumer: Any) -> bool:
    """Make a started ``AIOKafkaConsumer``'s ``getmany`` hand out aiokafka's C records.

    Returns False, and leaves the consumer as it is, if its internals are not the ones this
    module was written against (another aiokafka version, a test double): the consumer then
    hands out ``ConsumerRecord`` objects, which have the same :data:`LEAN_ATTRIBUTES`.
    """
    from aiokafka.consumer.fetcher import PartitionRecords

    fetcher: Any = getattr(consumer, "_fetcher", None)
    results = getattr(fetcher, "_records", None)
    if type(results) is not collections.OrderedDict or not all(
        hasattr(PartitionRecords, name) or name in PartitionRecords.__init__.__code__.co_names
        for name in _PARTITION_ATTRIBUTES
    ):
        log.warning("ingest: aiokafka's fetcher is not the one streams.fetch knows; records are built as usual")
        return False
    lean = _LeanResults()
    for tp, result in results.items():
        # Results fetched already stay as they are: one may be partly read.
        collections.OrderedDict.__setitem__(lean, tp, result)
    fetcher._records = lean
    return True
