"""Path rules and manifest validation of the share store (every rejection, plus properties)."""

from __future__ import annotations

import posixpath
import unicodedata

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from connectors.stores.shares import errors as E
from connectors.stores.shares.manifest import (
    MANIFEST_FORMAT,
    MAX_ENTRIES,
    MAX_FILE_SIZE,
    ManifestEntry,
    build_manifest,
    resulting_set,
    validate_manifest,
)
from connectors.stores.shares.paths import (
    MAX_COMPONENT_BYTES,
    check_collisions,
    collision_key,
    validate_dirname,
    validate_path,
)

SHA = "a" * 64
DIGEST = "b" * 64


@pytest.mark.parametrize(
    ("path", "error"),
    [
        ("/etc/passwd", E.AbsolutePathError),
        ("/", E.AbsolutePathError),
        ("../x", E.ParentTraversalError),
        ("a/../../x", E.ParentTraversalError),
        ("a/..", E.ParentTraversalError),
        ("a/\u2025/b", E.ParentTraversalError),  # '‥' is '..' under NFKC
        ("a\uff0f..\uff0fb", E.ParentTraversalError),  # full-width solidus becomes '/'
        ("./a", E.DotComponentError),
        ("a/./b", E.DotComponentError),
        ("", E.EmptyComponentError),
        ("a//b", E.EmptyComponentError),
        ("a/", E.EmptyComponentError),
        ("C:x", E.DrivePathError),
        ("c:/windows", E.DrivePathError),
        ("\\\\server\\share\\x", E.DrivePathError),
        ("//server/share/x", E.DrivePathError),
        ("file.txt:stream", E.DrivePathError),
        ("a\\b", E.BackslashError),
        ("..\\..\\x", E.BackslashError),
        ("a\x00b", E.ControlCharacterError),
        ("a\nb", E.ControlCharacterError),
        ("a\x1bb", E.ControlCharacterError),
        ("a\x7f", E.ControlCharacterError),
        ("a\x85", E.ControlCharacterError),
        ("evil\u202etxt.exe", E.ControlCharacterError),
        ("zero\u200bwidth", E.ControlCharacterError),
        ("line\u2028sep", E.ControlCharacterError),
        ("bad\udcffbyte", E.ControlCharacterError),
        ("a<b", E.WindowsUnsafeNameError),
        ("a|b", E.WindowsUnsafeNameError),
        ("what?", E.WindowsUnsafeNameError),
        ("trailing.", E.WindowsUnsafeNameError),
        ("trailing ", E.WindowsUnsafeNameError),
        ("dir/CON", E.WindowsUnsafeNameError),
        ("nul.txt", E.WindowsUnsafeNameError),
        ("com1.log", E.WindowsUnsafeNameError),
        ("x" * (MAX_COMPONENT_BYTES + 1), E.NameTooLongError),
        ("课" * 86, E.NameTooLongError),  # 258 UTF-8 bytes
        ("/".join(["abcdefghijklmnopq"] * 70), E.PathTooLongError),
        ("/".join(["a"] * 40), E.PathTooLongError),
        (".edu-sync/state.db", E.ReservedNameError),
        (".EDU-SYNC", E.ReservedNameError),
    ],
)
def test_each_unsafe_path_has_its_own_error(path: str, error: type[Exception]) -> None:
    with pytest.raises(error) as info:
        validate_path(path)
    assert isinstance(info.value, E.UnsafePathError)
    assert isinstance(info.value, E.PackageRejected)


@pytest.mark.parametrize(
    "path",
    ["a", "a/b/c.txt", "教务处/2025/课表.pdf", ".hidden", "a.b.c", "x" * MAX_COMPONENT_BYTES, "CONFIG.sys"],
)
def test_safe_paths_are_accepted_unchanged(path: str) -> None:
    assert validate_path(path) == path


def test_non_string_path_is_rejected() -> None:
    with pytest.raises(E.UnsafePathError):
        validate_path(b"a/b")


@pytest.mark.parametrize("name", ["../x", "a/b", ".hidden", "", "C:", ".edu-sync"])
def test_subscription_dirname_is_one_visible_component(name: str) -> None:
    with pytest.raises(E.UnsafePathError):
        validate_dirname(name)
    assert validate_dirname("课程表") == "课程表"


# ------------------------------------------------------------------------ properties

_SAFE_CHARS = st.sampled_from([*list("abcxyzABC019-_.() 课程表教务處é"), "é", "Ａ"])


@st.composite
def safe_component(draw: st.DrawFn) -> str:
    name = draw(st.text(_SAFE_CHARS, min_size=1, max_size=12))
    name = name.strip(" .") or "n"
    if name.split(".", 1)[0].upper() in {"CON", "PRN", "AUX", "NUL"}:
        name = "f" + name
    return name if name.casefold() != ".edu-sync" else "n"


safe_paths = st.lists(safe_component(), min_size=1, max_size=6).map("/".join)


@settings(max_examples=400, deadline=None)
@given(st.text(max_size=60))
def test_any_text_is_rejected_or_stays_inside(path: str) -> None:
    """Whatever the sender writes, an accepted path resolves strictly inside the root."""
    try:
        accepted = validate_path(path)
    except E.UnsafePathError:
        return
    assert accepted == path
    root = "/share/sub"
    joined = posixpath.normpath(posixpath.join(root, accepted))
    assert joined.startswith(root + "/")
    assert posixpath.relpath(joined, root) == accepted
    assert "\\" not in accepted and "\x00" not in accepted and ":" not in accepted
    for part in accepted.split("/"):
        assert part not in ("", ".", "..")
        assert unicodedata.normalize("NFKC", part) not in ("", ".", "..")
        assert all(unicodedata.category(c) not in ("Cc", "Cf", "Cs") for c in part)


@settings(max_examples=300, deadline=None)
@given(safe_paths)
def test_generated_safe_paths_are_accepted(path: str) -> None:
    assert validate_path(path) == path


_DANGERS = {
    "..": E.ParentTraversalError,
    "": E.EmptyComponentError,
    ".": E.DotComponentError,
    "a\x00": E.ControlCharacterError,
    "a\\b": E.BackslashError,
    "x:y": E.DrivePathError,
    "\u202e": E.ControlCharacterError,
}


@settings(max_examples=300, deadline=None)
@given(safe_paths, st.sampled_from(sorted(_DANGERS)), st.integers(min_value=0, max_value=6))
def test_one_bad_component_anywhere_rejects_the_path(path: str, bad: str, where: int) -> None:
    parts = path.split("/")
    position = min(where, len(parts))
    parts.insert(position, bad)
    expected = E.AbsolutePathError if (bad, position) == ("", 0) else _DANGERS[bad]
    with pytest.raises(expected):
        validate_path("/".join(parts))


@settings(max_examples=200, deadline=None)
@given(safe_paths)
def test_case_and_normalisation_variants_collide(path: str) -> None:
    variants = {path.upper(), unicodedata.normalize("NFD", path), unicodedata.normalize("NFKC", path)}
    for variant in variants - {path}:
        if "/".join(variant.split("/")) == variant:
            with pytest.raises(E.NameCollisionError):
                check_collisions([path, variant])


# ------------------------------------------------------------------------ collisions


@pytest.mark.parametrize(
    ("a", "b"),
    [
        ("Readme.txt", "README.TXT"),
        ("caf\u00e9", "cafe\u0301"),  # NFC vs NFD
        ("\uff21.txt", "A.txt"),  # full-width A (NFKC)
        ("Straße", "STRASSE"),  # case folding beyond lower()
        ("dir/x", "DIR/x"),
    ],
)
def test_names_colliding_under_folding_are_rejected(a: str, b: str) -> None:
    assert collision_key(a) == collision_key(b)
    with pytest.raises(E.NameCollisionError):
        check_collisions([a, b])


def test_a_file_that_is_also_a_directory_is_rejected() -> None:
    with pytest.raises(E.PathConflictError):
        check_collisions(["a", "a/b"])
    with pytest.raises(E.PathConflictError):
        check_collisions(["A/b", "a"])


# ------------------------------------------------------------------------ manifests


def _manifest(entries: list[dict[str, object]], **extra: object) -> dict[str, object]:
    raw: dict[str, object] = {
        "format": MANIFEST_FORMAT,
        "base_digest": DIGEST,
        "expected_digest": DIGEST,
        "file_count": len(entries),
        "entries": entries,
        "removed": [],
    }
    raw.update(extra)
    return raw


def _entry(path: str = "a.txt", **extra: object) -> dict[str, object]:
    entry: dict[str, object] = {"path": path, "type": "file", "size": 3, "sha256": SHA}
    entry.update(extra)
    return entry


@pytest.mark.parametrize(
    "entry_type",
    ["symlink", "hardlink", "link", "device", "char", "block", "fifo", "socket", "directory", None, 7],
)
def test_entries_other_than_regular_files_are_rejected(entry_type: object) -> None:
    with pytest.raises(E.UnsupportedEntryTypeError):
        validate_manifest(_manifest([_entry(type=entry_type, target="/etc/passwd")]))


@pytest.mark.parametrize(
    ("raw", "error"),
    [
        ("not an object", E.ManifestFormatError),
        (_manifest([_entry()], mode=0o4755), E.ManifestFormatError),
        (_manifest([_entry(mode=0o4755)]), E.ManifestFormatError),  # modes come from local config
        (_manifest([_entry(uid=0)]), E.ManifestFormatError),  # owners too
        (_manifest([_entry()], format="edu-files-manifest/0"), E.ManifestFormatError),
        (_manifest([_entry(sha256="A" * 64)]), E.ManifestFormatError),
        (_manifest([_entry(sha256="a" * 63)]), E.ManifestFormatError),
        (_manifest([_entry(size=-1)]), E.SizeLimitError),
        (_manifest([_entry(size=MAX_FILE_SIZE + 1)]), E.SizeLimitError),
        (_manifest([_entry(size="3")]), E.ManifestFormatError),
        (_manifest([_entry(size=True)]), E.ManifestFormatError),
        (_manifest([_entry("/abs")]), E.AbsolutePathError),
        (_manifest([_entry("a"), _entry("A")]), E.NameCollisionError),
        (_manifest([_entry("a"), _entry("a")]), E.NameCollisionError),
        (_manifest([_entry("a")], removed=["a"]), E.PathConflictError),
        (_manifest([_entry("a")], removed=["../b"]), E.ParentTraversalError),
        (_manifest([_entry("a")], base_digest=None, removed=["b"]), E.ManifestFormatError),
        (_manifest([_entry("a")], base_digest=None, file_count=2), E.CountMismatchError),
        (_manifest([_entry("a")], expected_digest="nope"), E.ManifestFormatError),
        ({**_manifest([]), "entries": "a"}, E.ManifestFormatError),
    ],
)
def test_bad_manifests_are_rejected_specifically(raw: object, error: type[Exception]) -> None:
    with pytest.raises(error):
        validate_manifest(raw)


def test_more_entries_than_the_limit_are_rejected() -> None:
    with pytest.raises(E.SizeLimitError):
        validate_manifest(_manifest([{}] * (MAX_ENTRIES + 1)))


def test_removed_path_must_be_in_the_current_set() -> None:
    manifest = validate_manifest(_manifest([], removed=["gone.txt"], file_count=0))
    with pytest.raises(E.UnknownRemovedPathError):
        resulting_set({}, manifest)


def test_new_name_colliding_with_a_kept_file_is_rejected() -> None:
    current = {"Report.pdf": ManifestEntry("Report.pdf", 3, SHA)}
    manifest = validate_manifest(_manifest([_entry("report.PDF")], file_count=2))
    with pytest.raises(E.NameCollisionError):
        resulting_set(current, manifest)


def test_case_only_rename_is_allowed_in_one_delta() -> None:
    before = [ManifestEntry("Readme", 3, SHA)]
    after = [ManifestEntry("README", 3, SHA)]
    manifest = validate_manifest(build_manifest(after, before).to_json())
    assert manifest.removed == ("Readme",)
    assert set(resulting_set({e.path: e for e in before}, manifest)) == {"README"}


def test_build_manifest_round_trips_and_sorts() -> None:
    files = [ManifestEntry(p, i, SHA) for i, p in enumerate(["b", "a/c", "课"])]
    manifest = build_manifest(files)
    assert [e.path for e in manifest.entries] == ["a/c", "b", "课"]
    assert manifest.is_snapshot and manifest.file_count == 3
    assert validate_manifest(manifest.to_json()) == manifest
    delta = build_manifest([ManifestEntry("b", 9, SHA), files[2]], files)
    assert [e.path for e in delta.entries] == ["b"] and delta.removed == ("a/c",)
    assert delta.base_digest == manifest.expected_digest
