"""The unified diff engine (tools/diffs.py): parsing, exact application, printing."""

from __future__ import annotations

import random

import pytest

from autoresearch_mcp.nanochat.errors import UserError
from autoresearch_mcp.tools import diffs
from autoresearch_mcp.tools.diffs import apply_file_patch, closest_region, parse_patch, split_lines, unified_diff

ORIGINAL = "".join(f"line {n}\n" for n in range(1, 31))


def apply(text: str, diff: str) -> str:
    (patch,) = parse_patch(diff)
    return apply_file_patch(text, patch, "train.py")


def refusal(text: str, diff: str) -> str:
    with pytest.raises(UserError) as caught:
        apply(text, diff)
    return str(caught.value)


def test_a_printed_diff_applies_back_to_its_result() -> None:
    edited = (
        ORIGINAL.replace("line 5\n", "line five\n").replace("line 20\n", "").replace("line 30\n", "line 30\nline 31\n")
    )
    diff = unified_diff("train.py", ORIGINAL, edited)
    assert diff.startswith("diff --git a/train.py b/train.py\n--- a/train.py\n+++ b/train.py\n@@ -2,7 +2,7 @@\n")
    assert apply(ORIGINAL, diff) == edited


def test_random_edits_round_trip() -> None:
    chooser = random.Random(7)
    for _ in range(40):
        lines = ORIGINAL.splitlines(keepends=True)
        for _ in range(chooser.randint(1, 5)):
            spot = chooser.randrange(len(lines))
            action = chooser.choice(["replace", "delete", "insert"])
            if action == "replace":
                lines[spot] = f"changed {chooser.random()}\n"
            elif action == "delete" and len(lines) > 1:
                del lines[spot]
            else:
                lines.insert(spot, f"new {chooser.random()}\n")
        edited = "".join(lines)
        if edited != ORIGINAL:
            assert apply(ORIGINAL, unified_diff("train.py", ORIGINAL, edited)) == edited


def test_a_file_rewritten_wholesale_diffs_as_one_replacement_that_applies(monkeypatch) -> None:
    """Past MAX_MATCHED_LINES, no line matching (quadratic in difflib): one hunk, still exact."""
    monkeypatch.setattr(diffs, "MAX_MATCHED_LINES", 10)
    edited = ORIGINAL.replace("line 1\n", "first\n").replace("line 29\n", "")
    diff = unified_diff("train.py", ORIGINAL, edited)
    hunk = diff.splitlines()[3:]
    assert (
        diff.count("@@ -") == 1
        and sum(line[0] == "-" for line in hunk) == 29
        and sum(line[0] == "+" for line in hunk) == 28
    )
    assert apply(ORIGINAL, diff) == edited
    middle = ORIGINAL.replace("line 12\n", "twelve\n").replace("line 18\n", "eighteen\n")
    diff = unified_diff("train.py", ORIGINAL, middle)
    assert diff.splitlines()[3:7] == ["@@ -9,13 +9,13 @@", " line 9", " line 10", " line 11"]
    assert apply(ORIGINAL, diff) == middle


def test_wrong_line_numbers_and_counts_are_tolerated() -> None:
    diff = "--- a/train.py\n+++ b/train.py\n@@ -90,2 +90,9 @@\n line 11\n-line 12\n+line twelve\n line 13\n"
    assert apply(ORIGINAL, diff) == ORIGINAL.replace("line 12\n", "line twelve\n")


def test_repeated_context_applies_at_the_match_nearest_the_stated_line() -> None:
    text = "x = 1\ny = 2\n" * 3
    diff = "--- a/train.py\n+++ b/train.py\n@@ -5,2 +5,2 @@\n-x = 1\n+x = 9\n y = 2\n"
    assert apply(text, diff) == "x = 1\ny = 2\n" * 2 + "x = 9\ny = 2\n"
    assert apply(text, diff.replace("@@ -5,2", "@@ -1,2")) == "x = 9\ny = 2\n" + "x = 1\ny = 2\n" * 2


def test_later_hunks_move_by_the_offset_of_earlier_ones() -> None:
    text = "".join(f"{n % 3}\n" for n in range(30))  # every window of context repeats
    diff = "--- a/train.py\n+++ b/train.py\n@@ -1,3 +1,3 @@\n 0\n-1\n+one\n 2\n@@ -10,3 +10,3 @@\n 0\n-1\n+uno\n 2\n"
    shifted = diff.replace("@@ -1,3", "@@ -4,3").replace("@@ -10,3", "@@ -13,3")
    result = apply(text, shifted).splitlines()
    assert result.index("one") == 4 and result.index("uno") == 13


def test_multiple_files_and_path_styles_are_parsed() -> None:
    diff = (
        "commit message preamble is ignored\n\n"
        "diff --git a/train.py b/train.py\nindex 123..456 100644\n--- a/train.py\n+++ b/train.py\n@@ -1 +1 @@\n-a\n+b\n"
        "--- model.py\t2024-01-01 00:00:00\n+++ model.py\t2024-01-02 00:00:00\n@@ -1 +1 @@\n-c\n+d\n"
        '--- "a/t\\303\\244st.py"\n+++ "b/t\\303\\244st.py"\n@@ -1 +1 @@\n-e\n+f\n'
        "--- /dev/null\n+++ b/new.py\n@@ -0,0 +1 @@\n+g\n"
    )
    patches = parse_patch(diff)
    assert [(p.old_path, p.new_path) for p in patches] == [
        ("train.py", "train.py"),
        ("model.py", "model.py"),
        ("täst.py", "täst.py"),
        (None, "new.py"),
    ]
    assert apply_file_patch("", patches[3], "new.py") == "g\n"


def test_crlf_files_stay_crlf_whatever_the_diff_uses() -> None:
    crlf = ORIGINAL.replace("\n", "\r\n")
    lf_diff = unified_diff("train.py", ORIGINAL, ORIGINAL.replace("line 3\n", "line 3\nadded\n"))
    crlf_diff = lf_diff.replace("\n", "\r\n")
    expected = crlf.replace("line 3\r\n", "line 3\r\nadded\r\n")
    assert apply(crlf, lf_diff) == expected
    assert apply(crlf, crlf_diff) == expected


def test_no_newline_at_end_of_file_markers() -> None:
    without = ORIGINAL.rstrip("\n")
    removing = unified_diff("train.py", ORIGINAL, without)
    assert removing.endswith("+line 30\n\\ No newline at end of file\n")
    assert apply(ORIGINAL, removing) == without
    assert apply(without, unified_diff("train.py", without, ORIGINAL)) == ORIGINAL
    # A hand-written hunk that appends after an unterminated last line still separates the lines.
    appended = "--- a/train.py\n+++ b/train.py\n@@ -30 +30,2 @@\n line 30\n+line 31\n"
    assert apply(without, appended) == ORIGINAL + "line 31\n"


def test_blank_context_lines_that_lost_their_space_still_match() -> None:
    text = "a\n\nb\n"
    diff = "--- a/train.py\n+++ b/train.py\n@@ -1,3 +1,3 @@\n a\n\n-b\n+c\n"
    assert apply(text, diff) == "a\n\nc\n"


def test_bare_hunk_headers_need_a_unique_match() -> None:
    diff = "--- a/train.py\n+++ b/train.py\n@@\n line 7\n-line 8\n+eight\n"
    assert "eight\n" in apply(ORIGINAL, diff)
    message = refusal("a\nb\na\nb\n", "--- a/train.py\n+++ b/train.py\n@@ @@\n a\n-b\n+c\n")
    assert "matches at lines 1, 3" in message


def test_insertion_without_context_uses_the_stated_line() -> None:
    diff = "--- a/train.py\n+++ b/train.py\n@@ -2,0 +3 @@\n+inserted\n"
    assert apply(ORIGINAL, diff).splitlines()[:4] == ["line 1", "line 2", "inserted", "line 3"]
    assert "the file has 30 lines" in refusal(ORIGINAL, diff.replace("-2,0", "-99,0"))


def test_wrong_context_names_the_hunk_and_the_closest_match() -> None:
    diff = "--- a/train.py\n+++ b/train.py\n@@ -18,3 +18,3 @@\n line 17\n-line 18\n+eighteen\n line 19 (edited)\n"
    message = refusal(ORIGINAL, diff)
    assert message.startswith(
        "train.py: hunk 1 (diff line 3): context not found near line 18; closest match at line 17 (1 of 3 lines differ"
    )
    assert "the file has 'line 19', you sent 'line 19 (edited)'" in message
    assert "re-read the file with read_file and resend the hunk" in message


def test_indentation_mismatch_is_refused_with_a_whitespace_hint() -> None:
    text = "def f():\n    return 1\n"
    message = refusal(text, "--- a/train.py\n+++ b/train.py\n@@ -1,2 +1,2 @@\n def f():\n-  return 1\n+  return 2\n")
    assert "differ only in whitespace" in message


def test_an_applied_patch_is_recognised_when_sent_again() -> None:
    diff = unified_diff("train.py", ORIGINAL, ORIGINAL.replace("line 9\n", "nine\n"))
    assert "looks applied already" in refusal(apply(ORIGINAL, diff), diff)


def test_hunks_out_of_file_order_are_refused() -> None:
    diff = (
        "--- a/train.py\n+++ b/train.py\n"
        "@@ -20,2 +20,2 @@\n-line 20\n+twenty\n line 21\n"
        "@@ -5,2 +5,2 @@\n-line 5\n+five\n line 6\n"
    )
    assert "hunks must be in file order" in refusal(ORIGINAL, diff)


@pytest.mark.parametrize(
    ("diff", "expected"),
    [
        ("just some words\n", "no file sections found"),
        ("@@ -1 +1 @@\n-a\n+b\n", "hunk header before any"),
        (
            "--- a/train.py\n+++ b/train.py\n@@ -1,2 +1,2 @@\n line 1\nline 2\n-line 3\n",
            "did a context line lose its leading space",
        ),
        ("--- a/train.py\n+++ b/train.py\n@@ -x +1 @@\n-a\n", "malformed hunk header"),
        ("--- a/train.py\n+++ b/train.py\n@@ -1,2 +1,2 @@\n line 1\n line 2\n", "changes nothing"),
        ("--- a/train.py\n+++ b/train.py\n@@ -1 +1 @@\n\\ No newline at end of file\n-a\n", "must follow the line"),
        ('--- "a/\\x"\n+++ "b/\\x"\n@@ -1 +1 @@\n-a\n+b\n', "escapes are malformed"),
    ],
)
def test_malformed_diffs_are_refused_with_the_line_at_fault(diff: str, expected: str) -> None:
    with pytest.raises(UserError, match=expected):
        parse_patch(diff)


def test_corrupted_context_is_always_refused_never_misapplied() -> None:
    chooser = random.Random(11)
    edited = ORIGINAL.replace("line 15\n", "fifteen\n")
    clean = unified_diff("train.py", ORIGINAL, edited)
    lines = clean.splitlines(keepends=True)
    context = [i for i, line in enumerate(lines) if line.startswith((" ", "-")) and not line.startswith("---")]
    for _ in range(50):
        corrupted = list(lines)
        spot = chooser.choice(context)
        body = corrupted[spot]
        column = chooser.randrange(1, len(body) - 1)
        corrupted[spot] = body[:column] + chooser.choice("#xQ ") + body[column + 1 :]
        if corrupted[spot] == body:
            continue
        with pytest.raises(UserError, match="context not found"):
            apply(ORIGINAL, "".join(corrupted))


def test_closest_region_prefers_similar_text_then_the_nearest_place() -> None:
    bodies = ["alpha", "beta", "gamma", "beta", "gamma"]
    assert closest_region(bodies, ["betta", "gamma"], near=3).start == 3
    assert closest_region(bodies, ["betta", "gamma"], near=0).start == 1
    assert closest_region(bodies, ["x"] * 9) is None


def test_split_lines_breaks_on_newlines_only() -> None:
    assert split_lines("a\x0cb\r\nc\u2028d\ne") == [("a\x0cb", "\r\n"), ("c\u2028d", "\n"), ("e", "")]


def test_mangled_diffs_apply_or_are_refused_but_never_crash() -> None:
    chooser = random.Random(3)
    edited = ORIGINAL.replace("line 5\n", "five\n").replace("line 20\n", "").rstrip("\n")
    clean = unified_diff("train.py", ORIGINAL, edited)
    pieces = [
        " ",
        "-",
        "+",
        "@",
        "\\",
        "\n",
        "\r",
        "0",
        ",",
        "\t",
        '"',
        "\\x",
        "@@ -1 +1 @@\n",
        "--- a/train.py\n+++ b/train.py\n",
    ]
    for _ in range(2000):
        text = clean
        for _ in range(chooser.randint(1, 5)):
            spot = chooser.randrange(len(text) + 1)
            if chooser.random() < 0.5:
                text = text[:spot] + chooser.choice(pieces) + text[spot:]
            else:
                text = text[:spot] + text[spot + chooser.randint(1, 8) :]
        try:
            for patch in parse_patch(text):
                apply_file_patch(ORIGINAL if patch.old_path else "", patch, "train.py")
        except UserError:
            pass


def test_a_one_line_change_in_a_long_file_gets_one_small_hunk_at_the_right_line() -> None:
    before = "".join(f"line {i}\n" for i in range(1, 5001))
    after = before.replace("line 4000\n", "line four thousand\n")
    diff = unified_diff("big.txt", before, after)
    assert "@@ -3997,7 +3997,7 @@\n" in diff
    assert diff.count("@@ -") == 1 and "-line 4000\n+line four thousand\n" in diff
    assert apply_file_patch(before, parse_patch(diff)[0], "big.txt") == after
