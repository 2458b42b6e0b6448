"""Tamper matrix: every way of damaging a package is rejected with its own error, no plaintext out.

Two layers are exercised.  Layer 1 is what an attacker on the exchange server or the
network meets: any change to the stored bytes is caught by the signature or by the signed
ciphertext digest before a single byte is decrypted.  Layer 2 is reached only by re-signing
(a lying or buggy *trusted* sender, or a file swapped between the digest check and the
read): each chunk's AEAD, its counter nonce with last-chunk flag and its package-id/index
associated data still stop every drop, reorder, duplicate, splice and truncation, and the
chunk that fails releases nothing.
"""

from __future__ import annotations

import base64
import json
import zlib
from datetime import timedelta
from pathlib import Path

import pytest
import zstandard

from protocol.errors import (
    BadMagicError,
    ChunkAuthenticationError,
    DecompressionBombError,
    DecompressionError,
    ExpiredError,
    FormatError,
    HeaderFormatError,
    HeaderSizeError,
    KeyUnwrapError,
    PackageError,
    PayloadDigestError,
    PlaintextTooLongError,
    PlaintextTooShortError,
    SenderMismatchError,
    SignatureError,
    TrailingDataError,
    TruncatedError,
    UnknownSenderError,
    UnknownSuiteError,
    UnsupportedVersionError,
    WrongRecipientError,
)
from protocol.keys import PartyKeys
from protocol.package import KEY_ID_BYTES, PREFIX, SIGNATURE_CONTEXT, SUPPORTED_SUITES, open_package
from tests.vectors.helpers import (
    AGENT,
    NOW,
    OTHER_AGENT,
    PLATFORM,
    TRUSTED,
    assemble,
    chunk_spans,
    craft,
    envelope_of,
    incompressible,
    split,
    write_package,
)

PAYLOAD = incompressible(6000)


@pytest.fixture(scope="module", params=sorted(SUPPORTED_SUITES))
def suite(request: pytest.FixtureRequest) -> str:
    """The whole matrix runs once per suite: only the payload digest differs between them."""
    name: str = request.param
    return name


@pytest.fixture(scope="module")
def original(tmp_path_factory: pytest.TempPathFactory, suite: str) -> Path:
    path = write_package(tmp_path_factory.mktemp("orig"), PAYLOAD, suite=suite)
    assert len(chunk_spans(path)) >= 5
    return path


@pytest.fixture(scope="module")
def other(tmp_path_factory: pytest.TempPathFactory, suite: str) -> Path:
    """Another package from the same sender to the same agent, same size, chunking and suite."""
    return write_package(
        tmp_path_factory.mktemp("other"), incompressible(6000, seed=1), sequence=2, suite=suite
    )


def attempt(
    path: Path, data: bytes, *, recipient: PartyKeys = AGENT, now_offset: timedelta = timedelta(0)
) -> tuple[PackageError, bytes, bool]:
    """Write ``data`` to ``path`` and read it fully; return (error, plaintext released, opened)."""
    path.write_bytes(data)
    released = bytearray()
    opened = False
    try:
        with open_package(
            path, trusted_senders=TRUSTED, recipient=recipient, now=NOW + now_offset
        ) as package:
            opened = True
            for block in package.iter_plaintext(256):
                released += block
    except PackageError as exc:
        return exc, bytes(released), opened
    pytest.fail(f"tampered package was accepted ({len(released)} plaintext bytes released)")


def rejected_before_decryption(
    path: Path, data: bytes, expected: type[PackageError] | tuple[type[PackageError], ...], **kw: object
) -> PackageError:
    error, released, opened = attempt(path, data, **kw)  # type: ignore[arg-type]
    assert isinstance(error, expected), f"{type(error).__name__}: {error}"
    assert released == b"" and not opened
    return error


def flip(data: bytes, offset: int, bit: int = 0) -> bytes:
    changed = bytearray(data)
    changed[offset] ^= 1 << bit
    return bytes(changed)


# ------------------------------------------------------------------ layer 1: stored bytes


def test_untampered_package_reads(original: Path) -> None:
    with open_package(original, trusted_senders=TRUSTED, recipient=AGENT, now=NOW) as package:
        assert b"".join(package.iter_plaintext()) == PAYLOAD


def test_bit_flip_in_magic_and_version(original: Path, tmp_path: Path) -> None:
    data = original.read_bytes()
    for offset in range(7):
        for bit in range(8):
            rejected_before_decryption(tmp_path / "p", flip(data, offset, bit), BadMagicError)
    for bit in range(8):
        error = rejected_before_decryption(tmp_path / "p", flip(data, 7, bit), UnsupportedVersionError)
        assert "version" in str(error)


def test_bit_flip_in_header_length(original: Path, tmp_path: Path) -> None:
    data = original.read_bytes()
    for offset in range(8, 12):
        for bit in range(8):
            # a wrong length moves every later field: too large, or the signer id is garbage
            rejected_before_decryption(
                tmp_path / "p",
                flip(data, offset, bit),
                (HeaderSizeError, UnknownSenderError, TruncatedError, FormatError),
            )


def test_bit_flip_anywhere_in_header(original: Path, tmp_path: Path) -> None:
    data = original.read_bytes()
    envelope = envelope_of(original)
    for offset in range(12, 12 + len(envelope.header_raw)):
        error = rejected_before_decryption(tmp_path / "p", flip(data, offset, offset % 8), SignatureError)
    assert "pinned key of 'platform'" in str(error)


def test_bit_flip_in_signature_block(original: Path, tmp_path: Path) -> None:
    data = original.read_bytes()
    envelope = envelope_of(original)
    signer_at = 12 + len(envelope.header_raw)
    for offset in range(signer_at, signer_at + KEY_ID_BYTES):
        error = rejected_before_decryption(tmp_path / "p", flip(data, offset, offset % 8), UnknownSenderError)
    assert "not a pinned sender key" in str(error) and "claims sender 'platform'" in str(error)
    for offset in (signer_at + KEY_ID_BYTES, signer_at + KEY_ID_BYTES + 1):  # signature length
        for bit in range(8):
            rejected_before_decryption(tmp_path / "p", flip(data, offset, bit), (FormatError, SignatureError))
    for offset in range(signer_at + KEY_ID_BYTES + 2, envelope.payload_offset):
        rejected_before_decryption(tmp_path / "p", flip(data, offset, offset % 8), SignatureError)


def test_bit_flip_in_wrapped_key(original: Path, tmp_path: Path) -> None:
    """The wrapped key sits in the signed header: altering it breaks the signature."""
    data = original.read_bytes()
    header, _ = split(original)
    wrapped = header["key_wrap"]["wrapped_key"].encode()
    start = data.index(wrapped)
    for offset in range(start, start + len(wrapped)):
        rejected_before_decryption(tmp_path / "p", flip(data, offset, 1), SignatureError)


def test_wrapped_key_corrupted_by_the_sender(original: Path, tmp_path: Path) -> None:
    """Behind the signature: a signed but unusable wrapped key is its own error."""
    header, payload = split(original)
    raw = bytearray(base64.b64decode(header["key_wrap"]["wrapped_key"]))
    raw[5] ^= 0x10
    header["key_wrap"]["wrapped_key"] = base64.b64encode(bytes(raw)).decode()
    error = rejected_before_decryption(tmp_path / "p", assemble(header, payload), KeyUnwrapError)
    assert "does not unwrap" in str(error)


def test_bit_flip_in_every_chunk(original: Path, tmp_path: Path) -> None:
    data = original.read_bytes()
    for start, end in chunk_spans(original):
        for offset in (start, (start + end) // 2, end - 1):  # first byte, middle, tag
            error = rejected_before_decryption(tmp_path / "p", flip(data, offset, 3), PayloadDigestError)
    assert "altered, reordered or spliced" in str(error)


def test_truncation_at_every_chunk_boundary(original: Path, tmp_path: Path) -> None:
    data = original.read_bytes()
    spans = chunk_spans(original)
    for index, (start, _) in enumerate(spans):
        error = rejected_before_decryption(tmp_path / "p", data[:start], TruncatedError)
        assert f"at a chunk boundary after {index} of {len(spans)} chunks" in str(error)


def test_truncation_mid_chunk_and_inside_the_envelope(original: Path, tmp_path: Path) -> None:
    data = original.read_bytes()
    for index, (start, end) in enumerate(chunk_spans(original)):
        error = rejected_before_decryption(tmp_path / "p", data[: (start + end) // 2], TruncatedError)
        assert f"inside chunk {index}" in str(error)
    for cut in (9, 100, envelope_of(original).payload_offset - 1):
        rejected_before_decryption(tmp_path / "p", data[:cut], TruncatedError)


def test_drop_a_chunk(original: Path, tmp_path: Path) -> None:
    data = original.read_bytes()
    for start, end in chunk_spans(original):
        error = rejected_before_decryption(tmp_path / "p", data[:start] + data[end:], TruncatedError)
    assert "chunks dropped" in str(error)


def test_reorder_chunks(original: Path, tmp_path: Path) -> None:
    data = original.read_bytes()
    spans = chunk_spans(original)
    (a0, a1), (b0, b1) = spans[1], spans[2]
    swapped = data[:a0] + data[b0:b1] + data[a0:a1] + data[b1:]
    rejected_before_decryption(tmp_path / "p", swapped, PayloadDigestError)


def test_duplicate_a_chunk(original: Path, tmp_path: Path) -> None:
    data = original.read_bytes()
    start, end = chunk_spans(original)[1]
    error = rejected_before_decryption(
        tmp_path / "p", data[:end] + data[start:end] + data[end:], TrailingDataError
    )
    assert "follow the final chunk" in str(error)


def test_splice_a_chunk_from_another_package(original: Path, other: Path, tmp_path: Path) -> None:
    data, foreign = original.read_bytes(), other.read_bytes()
    (start, end), (f0, f1) = chunk_spans(original)[2], chunk_spans(other)[2]
    assert end - start == f1 - f0
    rejected_before_decryption(tmp_path / "p", data[:start] + foreign[f0:f1] + data[end:], PayloadDigestError)


def test_appended_garbage(original: Path, tmp_path: Path) -> None:
    rejected_before_decryption(tmp_path / "p", original.read_bytes() + b"\0", TrailingDataError)


def test_header_swapped_from_another_package(original: Path, other: Path, tmp_path: Path) -> None:
    """Both halves are authentic, but the other package's signed digest does not match."""
    env, other_env = envelope_of(original), envelope_of(other)
    mixed = other.read_bytes()[: other_env.payload_offset] + original.read_bytes()[env.payload_offset :]
    rejected_before_decryption(tmp_path / "p", mixed, PayloadDigestError)


def test_wrong_recipient(original: Path, tmp_path: Path) -> None:
    error = rejected_before_decryption(
        tmp_path / "p", original.read_bytes(), WrongRecipientError, recipient=OTHER_AGENT
    )
    assert "addressed to 'school-1'" in str(error) and "not to 'school-2'" in str(error)


def test_same_party_id_but_another_key_is_the_wrong_recipient(original: Path, tmp_path: Path) -> None:
    impostor = PartyKeys.generate("school-1")
    rejected_before_decryption(tmp_path / "p", original.read_bytes(), WrongRecipientError, recipient=impostor)


def test_expired(original: Path, tmp_path: Path) -> None:
    error = rejected_before_decryption(
        tmp_path / "p", original.read_bytes(), ExpiredError, now_offset=timedelta(days=1)
    )
    assert "expired at 2026-11-26T12:00:00Z" in str(error)
    assert error.header is not None and error.header.subscription == "sub-1"


def test_unknown_sender_key(tmp_path: Path) -> None:
    rogue = PartyKeys.generate("platform")  # same name, key not pinned
    path = write_package(tmp_path, PAYLOAD, sender=rogue)
    error = rejected_before_decryption(tmp_path / "p", path.read_bytes(), UnknownSenderError)
    assert "not a pinned sender key" in str(error)


def test_pinned_key_claiming_another_sender(original: Path, tmp_path: Path) -> None:
    header, payload = split(original)
    header["sender"] = "school-2"
    rejected_before_decryption(tmp_path / "p", assemble(header, payload), SenderMismatchError)


def test_unknown_suite(original: Path, tmp_path: Path) -> None:
    header, payload = split(original)
    header["suite"] = "sm2-sm4gcm-sm3-zstd"
    error = rejected_before_decryption(tmp_path / "p", assemble(header, payload), UnknownSuiteError)
    assert "'sm2-sm4gcm-sm3-zstd' is not supported" in str(error)


def test_suite_swapped_under_the_same_digest(original: Path, tmp_path: Path) -> None:
    """Re-signed with the other suite but the digest kept: the payload is hashed as the signed
    suite says, so the digest no longer matches and nothing is decrypted."""
    header, payload = split(original)
    (header["suite"],) = SUPPORTED_SUITES - {header["suite"]}
    data = assemble(header, payload, payload_fields={"digest": header["payload"]["digest"]})
    rejected_before_decryption(tmp_path / "p", data, PayloadDigestError)


def test_non_canonical_header(original: Path, tmp_path: Path) -> None:
    """A validly signed header with whitespace is refused: only one byte form is accepted."""
    header, payload = split(original)
    pretty = json.dumps(header, indent=1, sort_keys=True).encode()
    signature = PLATFORM.signing_key.sign(
        SIGNATURE_CONTEXT + PREFIX + len(pretty).to_bytes(4, "big") + pretty
    )
    signer_id = bytes.fromhex(PLATFORM.public_bundle().signing_key_id)
    file = PREFIX + len(pretty).to_bytes(4, "big") + pretty + signer_id + b"\x00\x40" + signature + payload
    error = rejected_before_decryption(tmp_path / "p", file, HeaderFormatError)
    assert "canonical" in str(error)


# ------------------------------------------------------------- declared sizes and bombs


def test_declared_size_smaller_than_payload(original: Path, tmp_path: Path) -> None:
    data = craft(original, zstandard.ZstdCompressor().compress(PAYLOAD), declared=len(PAYLOAD) - 1)
    error, released, _ = attempt(tmp_path / "p", data)
    assert type(error) is PlaintextTooLongError
    assert f"holds {len(PAYLOAD)} plaintext bytes, more than the declared {len(PAYLOAD) - 1}" in str(error)
    assert len(released) < len(PAYLOAD) and PAYLOAD.startswith(released)


def test_declared_size_larger_than_payload(original: Path, tmp_path: Path) -> None:
    data = craft(original, zstandard.ZstdCompressor().compress(PAYLOAD), declared=len(PAYLOAD) + 1)
    error, released, _ = attempt(tmp_path / "p", data)
    assert type(error) is PlaintextTooShortError
    assert f"ends after {len(PAYLOAD)} plaintext bytes; the header declares {len(PAYLOAD) + 1}" in str(error)
    assert released == PAYLOAD  # authentic, but the stream never ends cleanly: nothing may commit


def test_decompression_bomb_stops_at_the_declared_size(original: Path, tmp_path: Path) -> None:
    # 4 GiB of zeros in ~100 KiB of compressed input: 16 frames of 256 MiB each.
    frame = zstandard.ZstdCompressor(level=1).compress(bytes(1 << 28))
    data = craft(original, frame * 16, declared=4096)
    error, released, _ = attempt(tmp_path / "p", data)
    assert type(error) is DecompressionBombError
    assert "decompression bomb" in str(error)
    assert len(released) <= 4096


def test_invalid_compressed_stream(original: Path, tmp_path: Path) -> None:
    data = craft(original, zlib.compress(PAYLOAD), declared=len(PAYLOAD))  # not zstd
    error, released, _ = attempt(tmp_path / "p", data)
    assert isinstance(error, DecompressionError) and released == b""


def test_oversized_zstd_window_is_refused(original: Path, tmp_path: Path) -> None:
    params = zstandard.ZstdCompressionParameters.from_level(3, window_log=28, write_content_size=False)
    compressor = zstandard.ZstdCompressor(compression_params=params).compressobj()
    data = craft(original, compressor.compress(PAYLOAD) + compressor.flush(), declared=6000)
    error, released, _ = attempt(tmp_path / "p", data)
    assert isinstance(error, DecompressionError) and released == b""
    assert "Frame requires too much memory" in str(error)


# -------------------------------------------- layer 2: chunk AEAD behind a re-signed digest


def resigned(path: Path, chunks: list[bytes]) -> bytes:
    header, _ = split(path)
    return assemble(header, b"".join(chunks))


def chunks_of(path: Path) -> list[bytes]:
    data = path.read_bytes()
    return [data[start:end] for start, end in chunk_spans(path)]


@pytest.mark.parametrize(
    ("case", "failing"),
    [("flip", 0), ("flip", 3), ("drop", 0), ("drop", 2), ("reorder", 1), ("duplicate", 2), ("splice", 0)],
)
def test_chunk_layer_catches_what_a_resigned_digest_lets_through(
    original: Path, other: Path, tmp_path: Path, case: str, failing: int
) -> None:
    chunks = chunks_of(original)
    if case == "flip":
        chunks[failing] = flip(chunks[failing], 7)
    elif case == "drop":
        del chunks[failing]
    elif case == "reorder":
        chunks[failing], chunks[failing + 1] = chunks[failing + 1], chunks[failing]
    elif case == "duplicate":
        chunks.insert(failing, chunks[failing - 1])
    elif case == "splice":
        chunks[failing] = chunks_of(other)[failing]
    error, released, opened = attempt(tmp_path / "p", resigned(original, chunks))
    assert opened and type(error) is ChunkAuthenticationError
    assert f"chunk {failing} of" in str(error)
    # Released plaintext is an authentic prefix; with the first chunk failing, none at all.
    assert PAYLOAD.startswith(released)
    if failing == 0:
        assert released == b""


def test_chunk_layer_catches_truncation_at_a_boundary(original: Path, tmp_path: Path) -> None:
    """A header re-signed for fewer chunks: the new last chunk was not sealed as final."""
    chunks = chunks_of(original)[:-1]
    error, released, _ = attempt(tmp_path / "p", resigned(original, chunks))
    assert type(error) is ChunkAuthenticationError
    assert f"chunk {len(chunks) - 1} of {len(chunks)}" in str(error)
    assert PAYLOAD.startswith(released) and len(released) < len(PAYLOAD)


def test_file_replaced_after_the_digest_check(original: Path, other: Path, tmp_path: Path) -> None:
    """Digest checked at open; the file changes before the read: the AEAD still refuses it."""
    path = tmp_path / "p"
    path.write_bytes(original.read_bytes())
    with open_package(path, trusted_senders=TRUSTED, recipient=AGENT, now=NOW) as package:
        data = bytearray(original.read_bytes())
        start, end = chunk_spans(original)[0]
        data[start:end] = chunks_of(other)[0]
        with open(path, "r+b") as handle:  # same inode, in place
            handle.write(data)
        stream = package.plaintext()
        with pytest.raises(ChunkAuthenticationError, match="chunk 0 of"):
            stream.read(1)


def test_several_zstd_frames_are_one_stream(original: Path, tmp_path: Path) -> None:
    """Concatenated frames are valid zstd; every frame is read, and counted against the size."""
    half = len(PAYLOAD) // 2
    frames = zstandard.ZstdCompressor().compress(PAYLOAD[:half]) + zstandard.ZstdCompressor().compress(
        PAYLOAD[half:]
    )
    path = tmp_path / "p"
    path.write_bytes(craft(original, frames, declared=len(PAYLOAD)))
    with open_package(path, trusted_senders=TRUSTED, recipient=AGENT, now=NOW) as package:
        assert b"".join(package.iter_plaintext(100)) == PAYLOAD
        assert package.plaintext().read() == PAYLOAD
    error, released, _ = attempt(path, craft(original, frames, declared=half))
    assert type(error) is PlaintextTooLongError and released == PAYLOAD[: len(released)]


def test_signed_header_with_builds_on_not_below_sequence(original: Path, tmp_path: Path) -> None:
    header, payload = split(original)
    header["builds_on"] = header["sequence"]
    error = rejected_before_decryption(tmp_path / "p", assemble(header, payload), HeaderFormatError)
    assert "builds_on" in str(error)


def test_hostile_unsigned_header_is_never_parsed_deeply(tmp_path: Path) -> None:
    """A 4 MiB header of nested arrays under an unknown key: a clean error, no RecursionError."""
    from protocol.header import MAX_HEADER_BYTES
    from protocol.package import inspect_package

    raw = b"[" * (MAX_HEADER_BYTES // 2) + b"]" * (MAX_HEADER_BYTES // 2)
    data = PREFIX + len(raw).to_bytes(4, "big") + raw + bytes(32) + b"\x00\x40" + bytes(64)
    error = rejected_before_decryption(tmp_path / "p", data, UnknownSenderError)
    assert "header unreadable" in str(error)
    result = inspect_package(tmp_path / "p", trusted_senders=TRUSTED)
    assert not result.ok and result.checks["signature"][0] == "failed"


def test_writer_refuses_deeply_nested_values(tmp_path: Path) -> None:
    from protocol.errors import InvalidFieldError

    nested: list[object] = []
    for _ in range(100):
        nested = [nested]
    with pytest.raises(InvalidFieldError, match="nested deeper"):
        write_package(tmp_path, b"x", manifest={"deep": nested})


def test_compressed_stream_cut_short_by_the_sender(original: Path, tmp_path: Path) -> None:
    """An authentic payload whose zstd frame is incomplete never ends cleanly — even when the
    declared size matches what the incomplete frame decompresses to."""
    frame = zstandard.ZstdCompressor().compress(PAYLOAD)
    for declared in (len(PAYLOAD), 5993):
        error, released, _ = attempt(tmp_path / "p", craft(original, frame[:-7], declared=declared))
        assert type(error) is DecompressionError, error
        assert "ends inside a zstd frame" in str(error)
        assert PAYLOAD.startswith(released) and len(released) < len(PAYLOAD)


def test_trailing_garbage_after_the_last_frame(original: Path, tmp_path: Path) -> None:
    frame = zstandard.ZstdCompressor().compress(PAYLOAD)
    error, _, _ = attempt(
        tmp_path / "p", craft(original, frame + b"\x00\x01\x02\x03junk", declared=len(PAYLOAD))
    )
    assert type(error) is DecompressionError and "not a valid zstd stream" in str(error)


def test_low_order_ephemeral_key_is_refused(original: Path, tmp_path: Path) -> None:
    """An all-zero X25519 point would give an all-zero shared secret: refused, not used."""
    header, payload = split(original)
    header["key_wrap"]["ephemeral_public_key"] = base64.b64encode(bytes(32)).decode()
    error = rejected_before_decryption(tmp_path / "p", assemble(header, payload), KeyUnwrapError)
    assert "does not unwrap" in str(error)
