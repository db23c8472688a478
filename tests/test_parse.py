import pytest

from wmg.parse import canonical_label, normalize_type, parse_output


@pytest.mark.parametrize("raw, expected", [
    ("Command enable logic", "commandenablelogic"),  # word-level: "command" keeps its letters
    ("IO and Side-Effect gadget", "iosideeffect"),
    ("IO and SIDE-EFFECT gadgets", "iosideeffect"),
    ("io side effect", "iosideeffect"),
    ("Control-Flow gadget", "controlflow"),
    ("Timing/Synchronization", "timingsynchronization"),
    ("ReadWrite", "readwrite"),
    ("READWRITE gadget", "readwrite"),
    ("Arithmetic/Computation gadget", "arithmeticcomputation"),
    ("Gadget and gadgets", ""),
    ("band handler", "bandhandler"),  # "and" inside a word stays
    ("", ""),
])
def test_normalize_type(raw, expected):
    assert normalize_type(raw) == expected


def test_parse_well_formed():
    p = parse_output("gadget_type: ReadWrite gadget; location: the COP instruction; explanation: Copies blocks.")
    assert (p.gadget_type, p.location, p.explanation) == ("ReadWrite gadget", "the COP instruction", "Copies blocks.")
    assert p.format_checks == {"gadget_type": True, "location": True, "explanation": True}
    assert p.format_ok and p.normalized_type == "readwrite"


def test_parse_case_insensitive_keys_and_whitespace():
    p = parse_output("  Gadget_Type :  Control-Flow gadget ;LOCATION:JSR rung;  Explanation:  jumps  ")
    assert p.gadget_type == "Control-Flow gadget"
    assert p.location == "JSR rung"
    assert p.explanation == "jumps"


def test_parse_missing_and_empty_fields_fail_their_checks():
    p = parse_output("gadget_type: Timing/Synchronization gadget; location: ; some trailing words")
    assert p.format_checks == {"gadget_type": True, "location": False, "explanation": False}
    assert not p.format_ok
    assert parse_output("").format_checks == {"gadget_type": False, "location": False, "explanation": False}
    assert parse_output("random text with no fields").gadget_type is None


def test_parse_value_stops_at_next_key_without_semicolon():
    p = parse_output("gadget_type: Composition gadget location: the AOI explanation: chains things")
    assert p.gadget_type == "Composition gadget"
    assert p.location == "the AOI"
    assert p.explanation == "chains things"


def test_canonical_label():
    assert canonical_label("IO and SIDE-EFFECT gadgets") == "IO and Side-Effect gadget"
    assert canonical_label("control flow") == "Control-Flow gadget"
    assert canonical_label("BOOL tag") is None
    assert canonical_label(None) is None
