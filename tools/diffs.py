"""Unified diffs: parsing them, applying them to text exactly, and printing them.

Applying follows `git apply`: a hunk is found by its context and removed lines, which must
match the file exactly (line endings aside); the line numbers in its header only say where
to look first, so a diff with stale numbers still applies at the nearest exact match. Hunk
line counts are recounted from the body, since hand-written diffs often get them wrong.

Line endings belong to the file, not the diff: lines are compared without their endings,
context lines keep theirs, and added lines take the file's own style (CRLF stays CRLF).
"""

from __future__ import annotations

import codecs
import difflib
import re
from collections.abc import Iterator
from dataclasses import dataclass, field

from autoresearch_mcp.nanochat.errors import UserError

Line = tuple[str, str]  # (text without its ending, the ending: "\n", "\r\n" or "" on a last line)

NO_NEWLINE_MARKER = "\\ No newline at end of file"
_HUNK_HEADER = re.compile(r"^@@ -(\d+)(?:,(\d+))? \+(\d+)(?:,(\d+))? @@")
_NUMBERED_HUNK_HEADER = re.compile(r"^@@\s*-")  # meant to carry line numbers; a bare "@@" need not
_GIT_HEADERS = (
    "index ",
    "old mode ",
    "new mode ",
    "new file mode ",
    "deleted file mode ",
    "similarity index ",
    "dissimilarity index ",
    "rename from ",
    "rename to ",
    "copy from ",
    "copy to ",
    "Binary files ",
    "GIT binary patch",
)
# Closest-match search (for error messages): windows are first ranked by shared words over at
# most this many of the wanted lines, then this many finalists are compared character by character.
_WORD = re.compile(r"\w+|[^\w\s]")
_PREFILTER_LINES = 20
_FINALISTS = 12


# ---- lines -----------------------------------------------------------------------------------


def decode_text(data: bytes) -> str | None:
    """The text of a UTF-8 file, or None for a binary one (NUL bytes, or not UTF-8)."""
    if b"\x00" in data:
        return None
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        return None


def split_lines(text: str) -> list[Line]:
    """Split on "\\n" only (not on the other characters str.splitlines treats as breaks)."""
    if not text:
        return []
    pieces = text.split("\n")
    lines = [(body[:-1], "\r\n") if body.endswith("\r") else (body, "\n") for body in pieces[:-1]]
    if pieces[-1]:
        lines.append((pieces[-1], ""))
    return lines


def join_lines(lines: list[Line]) -> str:
    return "".join(body + ending for body, ending in lines)


def line_ending(lines: list[Line]) -> str:
    """The file's style: CRLF when most of its lines end that way, else LF."""
    crlf = sum(ending == "\r\n" for _, ending in lines)
    lf = sum(ending == "\n" for _, ending in lines)
    return "\r\n" if crlf > lf else "\n"


def number_lines(bodies: list[str], first: int) -> str:
    """Lines prefixed with their 1-based numbers, as read_file shows them."""
    width = len(str(first + len(bodies) - 1))
    return "\n".join(f"{first + i:>{width}}\t{body}" for i, body in enumerate(bodies))


@dataclass(frozen=True)
class Region:
    start: int  # 0-based index of the region's first line
    differing: int  # lines of the region that are not exactly the wanted line


def closest_region(bodies: list[str], wanted: list[str], near: int | None = None) -> Region | None:
    """The window of len(wanted) lines that looks most like `wanted` (nearest to `near` on ties).

    Two passes keep this fast on large files: windows are ranked by the words they share with
    `wanted` (set operations), then the best few are compared character by character.
    """
    size = len(wanted)
    if not size or len(bodies) < size:
        return None
    starts = range(len(bodies) - size + 1)
    anchor = near if near is not None else 0
    words = [set(_WORD.findall(body)) for body in bodies]
    shared = [0.0] * len(starts)
    for offset, line in enumerate(wanted[:_PREFILTER_LINES]):
        wanted_words = set(_WORD.findall(line))
        weight = 1.0 / max(len(wanted_words), 1)
        for start in starts:
            shared[start] += len(words[start + offset] & wanted_words) * weight
    finalists = sorted(starts, key=lambda start: (-shared[start], abs(start - anchor)))[:_FINALISTS]

    def similarity(start: int) -> float:
        pairs = zip(bodies[start : start + size], wanted, strict=False)
        return sum(
            1.0 if have == want else difflib.SequenceMatcher(None, have, want, autojunk=False).ratio()
            for have, want in pairs
        )

    best = max(finalists, key=lambda start: (similarity(start), -abs(start - anchor)))
    differing = sum(have != want for have, want in zip(bodies[best : best + size], wanted, strict=False))
    return Region(best, differing)


def describe_mismatch(bodies: list[str], wanted: list[str], region: Region) -> str:
    """Where the closest region differs from what was wanted, for an error message."""
    pairs = list(zip(bodies[region.start : region.start + len(wanted)], wanted, strict=False))
    index = next(i for i, (have, want) in enumerate(pairs) if have != want)
    have, want = pairs[index]
    whitespace_only = all(h.split() == w.split() for h, w in pairs)
    hint = " (they differ only in whitespace: check the indentation)" if whitespace_only else ""
    return f"first difference at line {region.start + index + 1}: the file has {have!r}, you sent {want!r}{hint}"


# ---- parsing ---------------------------------------------------------------------------------


@dataclass
class Hunk:
    old_start: int | None  # 1-based line from the header; None for a bare "@@" header
    diff_line: int  # where the hunk starts in the diff text, for messages
    lines: list[tuple[str, str]] = field(default_factory=list)  # (" " | "-" | "+", text)
    new_ends_without_newline: bool = False  # "\ No newline at end of file" after its last new line

    @property
    def old(self) -> list[str]:
        return [text for tag, text in self.lines if tag != "+"]

    @property
    def new(self) -> list[str]:
        return [text for tag, text in self.lines if tag != "-"]


@dataclass
class FilePatch:
    old_path: str | None  # None: /dev/null (a new file)
    new_path: str | None  # None: /dev/null (a deletion)
    diff_line: int
    hunks: list[Hunk] = field(default_factory=list)
    git_headers: list[str] = field(default_factory=list)

    @property
    def path(self) -> str:
        return self.new_path or self.old_path or "?"


def parse_patch(text: str) -> list[FilePatch]:
    """The file sections of a unified diff; text before the first one (a commit message) is ignored."""
    lines = text.split("\n")
    patches: list[FilePatch] = []
    current: FilePatch | None = None
    has_paths = False
    index = 0
    while index < len(lines):
        line = lines[index].removesuffix("\r")
        if line.startswith("diff --git "):
            # Its paths name the file when no '---'/'+++' lines follow (renames, binary, mode changes).
            old, _, new = line[len("diff --git ") :].partition(" b/")
            current, has_paths = FilePatch(*_paths(old, "b/" + new), index + 1), False
            patches.append(current)
        elif line.startswith("--- ") and index + 1 < len(lines) and lines[index + 1].startswith("+++ "):
            if current is None or has_paths:
                current = FilePatch(None, None, index + 1)
                patches.append(current)
            current.old_path, current.new_path = _paths(line[4:], lines[index + 1][4:].removesuffix("\r"))
            has_paths = True
            index += 1
        elif line.startswith("@@"):
            if current is None or not has_paths:
                raise UserError(
                    f"diff line {index + 1}: hunk header before any '--- a/FILE' / '+++ b/FILE' lines; start each file's section with them"
                )
            hunk, index = _parse_hunk(lines, index)
            current.hunks.append(hunk)
            continue
        elif current is not None and line.startswith(_GIT_HEADERS):
            current.git_headers.append(line)
        elif current is not None and line.strip():
            raise _stray_line(index, line)
        index += 1
    if not patches:
        raise UserError(
            "no file sections found; send a unified diff with '--- a/FILE', '+++ b/FILE' and '@@ -N,M +N,M @@' hunks, as `git diff` prints it"
        )
    return patches


def _parse_hunk(lines: list[str], index: int) -> tuple[Hunk, int]:
    header = lines[index].removesuffix("\r")
    numbers = _HUNK_HEADER.match(header)
    if numbers is None and _NUMBERED_HUNK_HEADER.match(header):
        raise UserError(
            f"diff line {index + 1}: malformed hunk header {header[:80]!r}; expected '@@ -OLD_LINE,COUNT +NEW_LINE,COUNT @@'"
        )
    hunk = Hunk(int(numbers.group(1)) if numbers else None, index + 1)
    index += 1
    while index < len(lines):
        line = lines[index].removesuffix("\r")
        if line.startswith("--- ") and index + 1 < len(lines) and lines[index + 1].startswith("+++ "):
            break
        if line.startswith("\\"):
            _mark_no_newline(hunk, index)
        elif line == "":
            hunk.lines.append((" ", ""))  # a blank context line whose leading space was trimmed
        elif line[0] in " -+":
            hunk.lines.append((line[0], line[1:]))
        elif line.startswith(("@@", "diff --git ")):
            break
        else:
            raise _stray_line(index, line)
        index += 1
    while hunk.lines and hunk.lines[-1] == (" ", "") and lines[index - 1].removesuffix("\r") == "":
        hunk.lines.pop()  # trailing blank lines end the diff text; they are not context
        index -= 1
    if not any(tag != " " for tag, _ in hunk.lines):
        raise UserError(
            f"diff line {hunk.diff_line}: hunk has no '-' or '+' lines, so it changes nothing; drop it or add the change"
        )
    return hunk, index


def _stray_line(index: int, line: str) -> UserError:
    return UserError(
        f"diff line {index + 1}: {line[:80]!r} is neither a header nor a hunk line (hunk lines start with ' ', '-' or '+'); "
        "did a context line lose its leading space? Fix that line and resend"
    )


def _mark_no_newline(hunk: Hunk, index: int) -> None:
    if not hunk.lines:
        raise UserError(
            f"diff line {index + 1}: '{NO_NEWLINE_MARKER}' must follow the line it is about; put it right after the '-', '+' or ' ' line that has no newline at the end of the file"
        )
    # About the old side only ("-" line): matching ignores line endings, so nothing to record.
    hunk.new_ends_without_newline |= hunk.lines[-1][0] in " +"


def _paths(old: str, new: str) -> tuple[str | None, str | None]:
    old_path, new_path = _path(old), _path(new)
    # git's a/ and b/ prefixes are dropped when both sides carry them (or are /dev/null);
    # a diff written without them (`git diff --no-prefix`, or by hand) keeps its paths.
    if (old_path is None or old_path.startswith("a/")) and (new_path is None or new_path.startswith("b/")):
        old_path = old_path[2:] if old_path else None
        new_path = new_path[2:] if new_path else None
    return old_path, new_path


def _path(field_text: str) -> str | None:
    name = field_text.split("\t", 1)[0].rstrip()  # drop a `diff -u` timestamp
    if name.startswith('"') and name.endswith('"') and len(name) > 1:
        # git quotes unusual names C-style, with UTF-8 bytes as octal escapes.
        try:
            raw = codecs.escape_decode(name[1:-1].encode("utf-8"))[0]
        except ValueError as exc:
            raise UserError(
                f"file name {name[:80]} is quoted but its escapes are malformed ({exc}); write the path unquoted"
            ) from None
        name = raw.decode("utf-8", errors="replace")
    return None if name == "/dev/null" else name


# ---- applying --------------------------------------------------------------------------------


def apply_file_patch(text: str, patch: FilePatch, display: str) -> str:
    """`text` with the patch's hunks applied, in order; a UserError naming the hunk otherwise."""
    lines = split_lines(text)
    bodies = [body for body, _ in lines]
    ending = line_ending(lines)
    result: list[Line] = []
    cursor = 0  # lines before it are already copied into `result`
    shift = 0  # how far earlier hunks were from their stated lines; later ones likely move as much
    for number, hunk in enumerate(patch.hunks, 1):
        start = _locate(bodies, hunk, number, cursor, shift, display)
        if hunk.old_start is not None:
            shift = start - max(hunk.old_start - (1 if hunk.old else 0), 0)
        result.extend(lines[cursor:start])
        result.extend(_replacement(lines[start : start + len(hunk.old)], hunk, ending))
        cursor = start + len(hunk.old)
    result.extend(lines[cursor:])
    # A line that lost its newline ("\ No newline") but is no longer last gets one back.
    return join_lines(
        [(body, ending if not end and i < len(result) - 1 else end) for i, (body, end) in enumerate(result)]
    )


def _replacement(matched: list[Line], hunk: Hunk, ending: str) -> list[Line]:
    old_lines = iter(matched)
    new: list[Line] = []
    for tag, text in hunk.lines:
        if tag == " ":
            new.append(next(old_lines))
        elif tag == "-":
            next(old_lines)
        else:
            new.append((text, ending))
    if hunk.new_ends_without_newline and new:
        new[-1] = (new[-1][0], "")
    return new


def _locate(bodies: list[str], hunk: Hunk, number: int, cursor: int, shift: int, display: str) -> int:
    """Index of the line where the hunk's old side starts: its exact match nearest the stated line."""
    old = hunk.old
    where = f"{display}: hunk {number} (diff line {hunk.diff_line})"
    if not old:
        if hunk.old_start is None:
            raise UserError(
                f"{where} adds lines but has no context and no line number; add a few unchanged lines around it"
            )
        position = hunk.old_start + shift
        if not cursor <= position <= len(bodies):
            raise UserError(
                f"{where} inserts after line {hunk.old_start}, but the file has {len(bodies)} lines; re-read it with read_file"
            )
        return position
    matches = [
        start
        for start in range(cursor, len(bodies) - len(old) + 1)
        if bodies[start] == old[0] and bodies[start : start + len(old)] == old
    ]
    if matches and hunk.old_start is None and len(matches) > 1:
        lines = ", ".join(str(m + 1) for m in matches[:10])
        raise UserError(
            f"{where} has no line numbers and its context matches at lines {lines}; add line numbers or more context"
        )
    if matches:
        expected = (hunk.old_start or 1) - 1 + shift
        return min(matches, key=lambda start: (abs(start - expected), start))
    raise UserError(_not_found(bodies, hunk, where, cursor, shift))


def _not_found(bodies: list[str], hunk: Hunk, where: str, cursor: int, shift: int) -> str:
    old, new = hunk.old, hunk.new
    stated = f" near line {hunk.old_start}" if hunk.old_start is not None else ""
    message = f"{where}: context not found{stated}"
    near = (hunk.old_start or 1) - 1 + shift
    if new and any(bodies[s : s + len(new)] == new for s in range(len(bodies) - len(new) + 1)):
        return f"{message}; its '+' side is already in the file, so it looks applied already — check with read_file or workspace_diff"
    if any(bodies[s : s + len(old)] == old for s in range(0, min(cursor, len(bodies) - len(old) + 1))):
        return f"{message} after the previous hunk (it matches earlier in the file); hunks must be in file order and must not overlap"
    region = closest_region(bodies, old, near)
    if region is None:
        return f"{message}; the file has only {len(bodies)} lines — re-read it with read_file and resend the hunk"
    return (
        f"{message}; closest match at line {region.start + 1} ({region.differing} of {len(old)} lines differ, "
        f"{describe_mismatch(bodies, old, region)}) — re-read the file with read_file and resend the hunk"
    )


# ---- printing --------------------------------------------------------------------------------


# difflib's matching grows with the square of the lines it compares; a changed region longer
# than this (a file rewritten wholesale) is shown as one replacement, in linear time.
MAX_MATCHED_LINES = 5000


def unified_diff(path: str, before: str | None, after: str | None, context: int = 3) -> str:
    """`git diff` style text for one file; None on a side means the file does not exist there."""
    if before == after:
        return ""
    old, new = split_lines(before or ""), split_lines(after or "")
    out = [f"diff --git a/{path} b/{path}\n"]
    if before is None:
        out.append("new file mode 100644\n")
    if after is None:
        out.append("deleted file mode 100644\n")
    out.append(f"--- {'a/' + path if before is not None else '/dev/null'}\n")
    out.append(f"+++ {'b/' + path if after is not None else '/dev/null'}\n")
    for group in _changed_groups(old, new, context):
        first, last = group[0], group[-1]
        out.append(f"@@ -{_span(first[1], last[2])} +{_span(first[3], last[4])} @@\n")
        for tag, old_from, old_to, new_from, new_to in group:
            if tag == "equal":
                out.extend(_diff_line(" ", line) for line in old[old_from:old_to])
                continue
            out.extend(_diff_line("-", line) for line in old[old_from:old_to])
            out.extend(_diff_line("+", line) for line in new[new_from:new_to])
    return "".join(out)


def _changed_groups(old: list[Line], new: list[Line], context: int) -> Iterator[list[tuple[str, int, int, int, int]]]:
    """difflib's grouped opcodes, computed only over the region between the common prefix and
    suffix (plus context): an edit of a few lines costs the same in a long file as in a short one."""
    shorter = min(len(old), len(new))
    prefix = 0
    while prefix < shorter and old[prefix] == new[prefix]:
        prefix += 1
    suffix = 0
    while suffix < shorter - prefix and old[-1 - suffix] == new[-1 - suffix]:
        suffix += 1
    start = max(0, prefix - context)
    old_stop, new_stop = min(len(old), len(old) - suffix + context), min(len(new), len(new) - suffix + context)
    if max(old_stop, new_stop) - start > MAX_MATCHED_LINES:
        yield _one_replacement(start, prefix, (len(old) - suffix, old_stop), (len(new) - suffix, new_stop))
        return
    matcher = difflib.SequenceMatcher(None, old[start:old_stop], new[start:new_stop], autojunk=False)
    for group in matcher.get_grouped_opcodes(context):
        yield [(tag, a0 + start, a1 + start, b0 + start, b1 + start) for tag, a0, a1, b0, b1 in group]


def _one_replacement(
    start: int, prefix: int, old_end: tuple[int, int], new_end: tuple[int, int]
) -> list[tuple[str, int, int, int, int]]:
    """The changed region as one hunk: context, every old line out, every new line in, context.
    (old_end, new_end: where the common suffix starts, and where its context stops.)"""
    (old_changed, old_stop), (new_changed, new_stop) = old_end, new_end
    group = [("equal", start, prefix, start, prefix)] if prefix > start else []
    group.append(("replace", prefix, old_changed, prefix, new_changed))
    if old_stop > old_changed:
        group.append(("equal", old_changed, old_stop, new_changed, new_stop))
    return group


def _span(start: int, stop: int) -> str:
    length = stop - start
    first = start + 1 if length else start
    return f"{first}" if length == 1 else f"{first},{length}"


def _diff_line(tag: str, line: Line) -> str:
    body, ending = line
    return f"{tag}{body}{ending}" if ending else f"{tag}{body}\n{NO_NEWLINE_MARKER}\n"
