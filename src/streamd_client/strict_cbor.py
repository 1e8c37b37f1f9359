"""Decoding CBOR from an untrusted peer, sans I/O: the subset the native protocol speaks.

cbor2 decodes far more than we use, and some of it is a weapon in a peer's hands: tags 28/29
(shared references) build a DAG whose ``repr`` or walk is exponential in its size, or a list
that holds itself; tags 25/256 (string references) make one long string count many times; tag 30
(rationals) runs a quadratic gcd on bignums; tag 1 builds datetimes that raise. So everything
here goes through cbor2's C decoder with every tag refused except tag 2 (a positive bignum no
longer than ``BIGNUM_BYTES_MAX``: the client sends 128-bit explicit hash keys that way), no
indefinite lengths (our encoders never write them), map keys of text or bytes only (no hash
collisions built from integers), a bounded nesting depth, and exactly one item filling the
body (trailing bytes are refused).

Decoded size: a CBOR item takes one byte on the wire and 8 (a pointer) to 72 (an empty map)
bytes once decoded, so a body of small items decodes to many times its size. ``items_max``
bounds the number of items. A body no longer than ``items_max`` bytes cannot hold more items
than that, so only longer bodies pay for the count: a walk over the item heads in Python that
skips string contents (legitimate long bodies are long because of a few big byte strings, so
the walk is short for them).

Only ``StrictCborError`` escapes ``loads`` for any input; callers map it onto their own error
(ProtocolError for frames, CorruptDataError for stored batches).
"""

from __future__ import annotations

import io
from collections.abc import Callable
from typing import Any, Final, NoReturn

import cbor2

from .summary import summary

# Explicit hash keys (up to 2**128 - 1) cross as tag 2 bignums. Longer ones (up to ~9,800 digits)
# still decode, so that an integer argument out of range gets INVALID_ARGUMENT from its handler
# (a typed answer on a connection that stays) rather than a protocol error.
BIGNUM_BYTES_MAX: Final = 4096
_TAG_BIGNUM: Final = 2
_TAGS_KNOWN_MAX: Final = 65_535  # cbor2 decodes some tags below this itself: override them all


class StrictCborError(ValueError):
    """The bytes are not a CBOR item of the subset we accept."""


def _refuse_tag(*_args: Any) -> NoReturn:
    raise StrictCborError("CBOR tags are not accepted (only tag 2 around a short byte string)")


def _bignum(value: Any, *_args: Any) -> int:
    if type(value) is not bytes or len(value) > BIGNUM_BYTES_MAX:
        raise StrictCborError(f"a bignum must be a byte string of at most {BIGNUM_BYTES_MAX}")
    return int.from_bytes(value, "big")


_SEMANTIC: Final[dict[int, Callable[..., Any]]] = {
    tag: _refuse_tag for tag in range(_TAGS_KNOWN_MAX + 1)
}
_SEMANTIC[_TAG_BIGNUM] = _bignum


def loads(body: bytes, *, items_max: int, depth_max: int) -> Any:
    """The one CBOR item filling ``body``. Raises StrictCborError for anything else."""
    assert items_max > 0
    if len(body) > items_max:
        count_items(body, items_max, depth_max)
    reader = ItemReader(body, depth_max=depth_max, read_size=max(4096, len(body)))  # one read
    value = reader.next()
    if reader.at != len(body):
        raise StrictCborError(f"{len(body) - reader.at} bytes after the CBOR item")
    return value


class ItemReader:
    """Successive items of one body, each decoded strictly; ``at`` is where the next starts.

    Counts no items: the caller bounds them (``loads`` by ``count_items``, the batch decoder by
    checking each column's head at ``at`` before decoding it). cbor2 reads the body in chunks
    of ``read_size`` and gives back what it did not use, so ``at`` is exact.
    """

    def __init__(self, body: bytes, *, depth_max: int, read_size: int, start: int = 0) -> None:
        assert depth_max > 0 and read_size > 0 and 0 <= start
        self._stream = io.BytesIO(body)
        self._stream.seek(start)
        self._decoder = cbor2.CBORDecoder(
            self._stream,
            read_size=read_size,
            semantic_decoders=_SEMANTIC,
            tag_hook=_refuse_tag,
            allow_indefinite=False,
            strict_hashable_types=True,
            max_depth=depth_max,
        )

    @property
    def at(self) -> int:
        return self._stream.tell()

    def next(self) -> Any:
        """The next item. Raises StrictCborError."""
        try:
            return self._decoder.decode()
        except Exception as exc:  # cbor2 raises several types on malformed input
            cause = exc.__cause__ if isinstance(exc.__cause__, StrictCborError) else exc
            raise StrictCborError(
                f"not a CBOR item we accept: {summary(str(cause), 160)}"
            ) from None


def count_items(body: bytes, items_max: int, depth_max: int) -> int:
    """The number of items in the one CBOR item filling ``body``, walking heads only.

    Raises StrictCborError past ``items_max`` items or ``depth_max`` levels, for a tag other
    than a short bignum, an indefinite length, and a body that ends early or goes on after the
    item. Major type 7 (simple values, floats) needs nothing more: its bytes are the head's.
    """
    end = len(body)
    at = 0
    items = 0
    pending = [1]  # per open container (the body is one): items still to read in it
    while pending:
        if pending[-1] == 0:
            pending.pop()
            continue
        pending[-1] -= 1
        if at >= end:
            raise StrictCborError("CBOR item runs past the end of the body")
        initial = body[at]
        major, info = initial >> 5, initial & 0x1F
        at += 1
        if info < 24:
            argument = info
        elif info < 28:
            width = 1 << (info - 24)
            argument = int.from_bytes(body[at : at + width], "big")
            at += width
        else:
            raise StrictCborError("indefinite lengths and reserved CBOR heads are not accepted")
        items += 1
        if items > items_max:
            raise StrictCborError(f"more than {items_max} CBOR items")
        if major in (2, 3):
            at += argument
        elif major in (4, 5):
            if len(pending) > depth_max:
                raise StrictCborError(f"CBOR nesting deeper than {depth_max}")
            count = argument if major == 4 else 2 * argument
            if count > end - at:  # every item takes at least one byte
                raise StrictCborError("CBOR container claims more items than the body holds")
            pending.append(count)
        elif major == 6:
            if argument != _TAG_BIGNUM or at >= end or body[at] >> 5 != 2 or body[at] & 0x1F == 31:
                _refuse_tag()  # _bignum bounds the length in the decoding pass
            pending[-1] += 1  # the tag's content is the next item of the same container
    if at != end:
        raise StrictCborError(f"{end - at} bytes after the CBOR item")
    return items
