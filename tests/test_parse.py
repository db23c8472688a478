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


def test_location_in_excerpt_is_an_exact_span_up_to_whitespace():
    from wmg.parse import location_in_excerpt

    excerpt = "The block MOV copies\n the source   to the destination every scan."
    assert location_in_excerpt("MOV copies the source", excerpt) is True  # whitespace runs are one space
    assert location_in_excerpt("  copies the source to  ", excerpt) is True
    assert location_in_excerpt("mov copies the source", excerpt) is False  # case matters
    assert location_in_excerpt("MOV copies a source", excerpt) is False
    assert location_in_excerpt("the destination every scan!", excerpt) is False
    assert location_in_excerpt(None, excerpt) is None and location_in_excerpt("  ", excerpt) is None


def test_every_gold_location_of_the_bundled_data_is_a_span():
    from wmg.data import bundled_data, load_jsonl
    from wmg.parse import location_in_excerpt, parse_output

    examples = load_jsonl(bundled_data())
    assert all(location_in_excerpt(parse_output(e.output).location, e.input) for e in examples)


def test_comparison_rows_carry_the_location_check():
    from wmg.pipeline import example_rows

    excerpt = "JMP jumps to the label LBL 5 when the rung is true."
    texts = {"a": "gadget_type: Control-Flow gadget; location: jumps to the label LBL 5; explanation: x",
             "b": "gadget_type: Control-Flow gadget; location: jumps to label 5; explanation: x",
             "c": "gadget_type: Control-Flow gadget"}
    _, _, rows, _ = example_rows(1, "Control-Flow gadget", texts, {m: (5, 0.1) for m in texts}, None, excerpt)
    assert {r.model: r.location_in_excerpt for r in rows} == {"a": True, "b": False, "c": None}
