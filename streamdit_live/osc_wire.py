"""Strict OSC 1.0 decoding: a datagram is accepted only if every one of its bytes is accounted for.

python-osc's parser is lenient where a control surface must not be: it zero-pads a truncated
float (a cut-off `/streamdit/strength` read as 0.0), skips type tags it does not know, ignores
bytes after the last argument and recurses once per nested bundle (a RecursionError a few
hundred levels down). Here a message is its address, its type tags and exactly the argument
bytes those tags declare; strings are NUL-terminated and NUL-padded to 4 bytes; bundles nest
at most `MAX_BUNDLE_DEPTH` deep. Anything else raises `DecodeError` with one sentence.

Argument types: `i` int32, `h` int64, `f` float32, `d` float64, `s` string (UTF-8), `T`/`F`
true/false. The others (blobs, symbols, MIDI, arrays, ...) have no use here and are refused.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

MAX_BUNDLE_DEPTH = 8  # a bundle inside a bundle ... this many levels; more is refused
BUNDLE_TAG = b"#bundle\0"
_TIME_TAG_BYTES = 8
# type tag -> (struct format, byte count); T and F carry no bytes.
_FIXED = {"i": (">i", 4), "h": (">q", 8), "f": (">f", 4), "d": (">d", 8)}
_NO_BYTES = {"T": True, "F": False}
TYPE_TAGS = "".join([*_FIXED, "s", *_NO_BYTES])


class DecodeError(ValueError):
    """A datagram that is not exactly a well-formed OSC message or bundle."""


class NestingError(DecodeError):
    """A bundle nested deeper than `MAX_BUNDLE_DEPTH`."""


@dataclass(frozen=True)
class Message:
    address: str
    tags: str  # the type tags without the leading comma; "" when there are no arguments
    args: tuple[object, ...]


def decode(data: bytes, max_depth: int = MAX_BUNDLE_DEPTH) -> list[Message]:
    """The messages of a datagram (a bundle's in order, its time tag ignored)."""
    if data.startswith(BUNDLE_TAG):
        return _bundle(data, max_depth)
    return [_message(data)]


def _bundle(data: bytes, depth_left: int) -> list[Message]:
    if depth_left <= 0:
        raise NestingError(f"bundles may nest at most {MAX_BUNDLE_DEPTH} deep.")
    pos = len(BUNDLE_TAG) + _TIME_TAG_BYTES
    if len(data) < pos:
        raise DecodeError(f"bundle of {len(data)} bytes ends inside its time tag.")
    messages: list[Message] = []
    while pos < len(data):
        if len(data) - pos < 4:
            raise DecodeError(f"bundle element size cut off at byte {pos}.")
        (size,) = struct.unpack_from(">i", data, pos)
        pos += 4
        if size <= 0 or size % 4 or size > len(data) - pos:
            raise DecodeError(
                f"bundle element of {size} bytes at byte {pos} does not fit the "
                f"{len(data) - pos} bytes left (or is not a multiple of 4)."
            )
        element = data[pos : pos + size]
        if element.startswith(BUNDLE_TAG):
            messages += _bundle(element, depth_left - 1)
        else:
            messages.append(_message(element))
        pos += size
    if not messages:
        raise DecodeError("empty bundle: it holds no message.")
    return messages


def _message(data: bytes) -> Message:
    address, pos = _string(data, 0, "the address")
    if not address.startswith("/"):
        raise DecodeError(
            f"not an OSC message: the address must start with '/' ({len(data)} bytes)."
        )
    if pos == len(data):
        return Message(address, "", ())  # no type tag string at all: OSC 1.0 for "no arguments"
    if data[pos : pos + 1] != b",":
        raise DecodeError(f"{short(address)}: missing the type tag string (',...').")
    tags, pos = _string(data, pos, "the type tags")
    tags = tags[1:]
    unknown = sorted(set(tags) - set(TYPE_TAGS))
    if unknown:
        raise DecodeError(
            f"{short(address)}: type tag {unknown[0]!r} is not used here "
            f"(use {', '.join(TYPE_TAGS)})."
        )
    args: list[object] = []
    for number, tag in enumerate(tags, start=1):
        if tag in _NO_BYTES:
            args.append(_NO_BYTES[tag])
        elif tag == "s":
            text, pos = _string(data, pos, f"argument {number} (s)")
            args.append(text)
        else:
            fmt, size = _FIXED[tag]
            if len(data) - pos < size:
                raise DecodeError(
                    f"{short(address)}: argument {number} ({tag}) needs {size} bytes, "
                    f"{len(data) - pos} left (a cut-off packet)."
                )
            (value,) = struct.unpack_from(fmt, data, pos)
            args.append(value)
            pos += size
    if pos != len(data):
        raise DecodeError(
            f"{short(address)}: {len(data) - pos} bytes after the arguments ',{tags}' declare."
        )
    return Message(address, tags, tuple(args))


def _string(data: bytes, pos: int, what: str) -> tuple[str, int]:
    """The NUL-terminated, NUL-padded UTF-8 string at `pos`, and the position after it."""
    end = data.find(b"\0", pos)
    if end < 0:
        raise DecodeError(f"{what} is not NUL-terminated at byte {pos}.")
    padded = (end // 4 + 1) * 4
    if padded > len(data) or data[end:padded].strip(b"\0"):
        raise DecodeError(f"{what} is not padded with NUL bytes to a multiple of 4.")
    try:
        return data[pos:end].decode("utf-8"), padded
    except UnicodeDecodeError:
        raise DecodeError(f"{what} is not UTF-8 text.") from None


def short(text: str, limit: int = 60) -> str:
    """`text` for an error sentence: cut to `limit` characters (an error must not echo a
    16 KiB address) and quoted when it holds control characters (no terminal escapes in logs)."""
    if len(text) <= limit and text.isprintable():
        return text
    return repr(text[:limit]) + ("..." if len(text) > limit else "")
