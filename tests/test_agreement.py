from wmg.agreement import agreement


def test_two_models_agree_after_normalization():
    a = agreement({"t5": "ReadWrite gadget", "gpt": "READWRITE"}, "ReadWrite gadget")
    assert a.full_agreement
    assert a.unique_types == ["ReadWrite gadget", "READWRITE"]
    assert a.unique_normalized_types == ["readwrite"]
    assert a.majority_type == "ReadWrite gadget" and a.majority_count == 2
    assert a.matches_gold == {"t5": True, "gpt": True}


def test_two_models_disagree_tutorial_example():
    a = agreement({"flan-t5-small": "Command enable logic", "distilgpt2": "Control-Flow gadget"},
                  "Control-Flow gadget")
    assert not a.full_agreement
    assert a.normalized_types == {"flan-t5-small": "commandenablelogic", "distilgpt2": "controlflow"}
    # a 1-1 tie goes to the first model in order
    assert a.majority_type == "Command enable logic" and a.majority_count == 1
    assert a.matches_gold == {"flan-t5-small": False, "distilgpt2": True}


def test_three_models_majority():
    a = agreement({"a": "Timing gadget", "b": "Composition gadget", "c": "composition"}, "Composition gadget")
    assert not a.full_agreement
    assert a.majority_type == "Composition gadget" and a.majority_normalized == "composition"
    assert a.majority_count == 2
    assert a.unique_normalized_types == ["timing", "composition"]
    assert a.matches_gold == {"a": False, "b": True, "c": True}


def test_three_models_full_agreement():
    a = agreement({"a": "IO and Side-Effect gadget", "b": "io side effect", "c": "IO and SIDE-EFFECT gadgets"}, None)
    assert a.full_agreement and a.majority_count == 3
    assert a.matches_gold == {"a": False, "b": False, "c": False}  # no gold type


def test_missing_type_is_never_agreement():
    a = agreement({"a": None, "b": None}, "ReadWrite gadget")
    assert not a.full_agreement
    assert a.majority_type is None and a.majority_count == 0
    b = agreement({"a": "ReadWrite", "b": None}, "ReadWrite gadget")
    assert not b.full_agreement and b.majority_count == 1
