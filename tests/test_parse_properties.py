"""Property-based tests of the output parser and the normalizer on arbitrary text."""
from hypothesis import given, settings
from hypothesis import strategies as st

from wmg.agreement import agreement
from wmg.parse import FIELDS, normalize_type, parse_output

keys = st.sampled_from(["gadget_type:", "GADGET TYPE :", "location:", "Location:", "explanation:", ";", "\n"])
texts = st.lists(st.one_of(st.text(max_size=40), keys), max_size=12).map("".join)


@settings(max_examples=300, deadline=None)
@given(texts)
def test_parse_never_raises_and_checks_match_fields(text):
    p = parse_output(text)
    for f in FIELDS:
        value = getattr(p, f)
        assert value is None or (isinstance(value, str) and value == value.strip() and value)
        assert p.format_checks[f] == (value is not None)
        assert value is None or ";" not in value


@settings(max_examples=300, deadline=None)
@given(st.one_of(st.text(), st.sampled_from(["a-n-d", "g adget", "Gadget-S", "and gadget"])))
def test_normalization_is_idempotent_and_alphanumeric(text):
    n = normalize_type(text)
    assert normalize_type(n) == n
    assert all(c.isalnum() for c in n)
    assert n == n.lower()


@settings(max_examples=200, deadline=None)
@given(st.dictionaries(st.sampled_from(["a", "b", "c", "d"]), st.one_of(st.none(), texts), min_size=1),
       st.one_of(st.none(), texts))
def test_agreement_is_consistent(types, gold):
    a = agreement(types, gold)
    assert a.majority_count <= len(types)
    assert a.full_agreement == (len(set(a.normalized_types.values())) == 1 and all(a.normalized_types.values()))
    assert set(a.matches_gold) == set(types)
