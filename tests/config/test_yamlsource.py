from __future__ import annotations

from pathlib import Path

import pytest

from lg.config.yamlsource import MAX_FILE_BYTES, load_yaml, parse_yaml
from lg.errors import InvalidInput

P = Path("p.yaml")


def error_of(text: str) -> str:
    with pytest.raises(InvalidInput) as caught:
        parse_yaml(text, P)
    return str(caught.value)


def test_values_and_key_locations_are_recorded() -> None:
    doc = parse_yaml("a: 1\nsteps:\n  - id: x\n    run: |\n      echo hi\n", P)
    assert doc.data == {"a": 1, "steps": [{"id": "x", "run": "echo hi\n"}]}
    assert str(doc.location(("steps", 0, "id"))) == "p.yaml:3:9: steps[0].id"
    assert str(doc.location(("steps", 0, "id"), at_key=True)) == "p.yaml:3:5: steps[0].id"
    # a block scalar's location is its first content line, so template line 1 maps onto it
    assert doc.location(("steps", 0, "run")).line == 5


def test_unknown_path_falls_back_to_nearest_ancestor() -> None:
    doc = parse_yaml("steps:\n  - id: x\n", P)
    assert doc.location(("steps", 0, "needs", 3)).line == 2


def test_duplicate_keys_are_refused() -> None:
    assert error_of("name: a\nname: b\n") == "p.yaml:2:1: name: duplicate key 'name' " \
        "(YAML would silently keep the last one)"


def test_custom_tags_never_construct_anything() -> None:
    message = error_of("x: !!python/object/apply:os.system ['touch /tmp/pwned']\n")
    assert "not allowed" in message
    assert not Path("/tmp/pwned").exists()


def test_tabs_give_the_parser_line() -> None:
    assert error_of("a:\n\t- b\n").startswith("p.yaml:2:1: invalid YAML")


def test_an_unclosed_quote_is_reported_where_it_opens_with_where_the_file_ended() -> None:
    text = 'name: x\nsteps:\n  - id: a\n    run: "echo hi\n  - id: b\n    run: ls\n'
    assert error_of(text) == ("p.yaml:4:10: invalid YAML: a quoted scalar that starts here is not closed: "
                              "found unexpected end of stream (at line 7, column 1)")
    assert error_of("a: 1\nb: 'open\n").startswith("p.yaml:2:4: invalid YAML: a quoted scalar")


def test_an_unclosed_bracket_is_reported_where_it_opens() -> None:
    message = error_of("a: [1, 2\nb: 3\n")
    assert message.startswith("p.yaml:1:4: invalid YAML: a flow sequence that starts here is not closed")
    assert "(at line 2, column 2)" in message


def test_a_bad_indent_is_reported_where_it_is_with_the_mapping_it_breaks() -> None:
    message = error_of("a:\n  b: 1\n c: 2\n")
    assert message.startswith("p.yaml:3:2: invalid YAML: ")
    assert message.endswith("started at line 1, column 1)")


def test_empty_file() -> None:
    assert error_of("") == "p.yaml: file is empty"
    assert error_of("# only a comment\n") == "p.yaml: file is empty"


def test_alias_bomb_is_refused_quickly() -> None:
    lines = ['a: &a ["x","x","x","x","x","x","x","x","x"]']
    for level, name in enumerate("bcdefghi"):
        previous = "abcdefghi"[level]
        lines.append(f"{name}: &{name} [" + ",".join([f"*{previous}"] * 9) + "]")
    assert "alias bomb" in error_of("\n".join(lines) + "\n")


def test_plain_aliases_and_merge_keys_work() -> None:
    doc = parse_yaml("base: &b {p: 1, q: 2}\nd:\n  <<: *b\n  q: 3\n", P)
    assert doc.data["d"] == {"p": 1, "q": 3}


def test_boolean_looking_keys_must_be_quoted() -> None:
    assert "quote it" in error_of("on: push\n")


def test_missing_directory_binary_non_utf8_and_huge(tmp_path: Path) -> None:
    with pytest.raises(InvalidInput, match="file not found"):
        load_yaml(tmp_path / "nope.yaml")
    with pytest.raises(InvalidInput, match="is a directory"):
        load_yaml(tmp_path)
    binary = tmp_path / "bin.yaml"
    binary.write_bytes(b"name: x\x00\x01\x02")
    with pytest.raises(InvalidInput, match="binary file"):
        load_yaml(binary)
    latin = tmp_path / "latin.yaml"
    latin.write_bytes(b"name: ok\nnote: caf\xe9\n")
    with pytest.raises(InvalidInput, match=r"latin.yaml:2:10: not valid UTF-8"):
        load_yaml(latin)
    huge = tmp_path / "huge.yaml"
    huge.write_bytes(b"# x\n" * (MAX_FILE_BYTES // 4 + 1))
    with pytest.raises(InvalidInput, match="the limit is"):
        load_yaml(huge)
