"""Label and field selectors as apimachinery's labels.Parse / fields.ParseSelector read them."""

from __future__ import annotations

import pytest

from netplane.apiserver.selectors import (
    FieldRequirement,
    Requirement,
    SelectorError,
    field_value,
    fields_match,
    labels_match,
    matcher,
    parse_field_selector,
    parse_label_selector,
)


def obj(labels: dict | None = None, **top) -> dict:
    meta: dict = {"name": top.pop("name", "x"), "namespace": top.pop("namespace", "default")}
    if labels is not None:
        meta["labels"] = labels
    return {"metadata": meta, **top}


def sel(text: str, o: dict) -> bool:
    return labels_match(parse_label_selector(text), o)


# -- label selector parsing ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "text, expected",
    [
        ("a=b", [Requirement("a", "=", ("b",))]),
        ("a==b", [Requirement("a", "=", ("b",))]),
        ("a = b", [Requirement("a", "=", ("b",))]),
        ("a!=b", [Requirement("a", "!=", ("b",))]),
        ("a=", [Requirement("a", "=", ("",))]),
        ("a in (x,y)", [Requirement("a", "in", ("x", "y"))]),
        ("a  in  ( x , y )", [Requirement("a", "in", ("x", "y"))]),
        ("a notin (x)", [Requirement("a", "notin", ("x",))]),
        ("a", [Requirement("a", "exists")]),
        ("!a", [Requirement("a", "!")]),
        ("example.com/tier=web", [Requirement("example.com/tier", "=", ("web",))]),
        ("app.kubernetes.io/name=My_App-1.0", [Requirement("app.kubernetes.io/name", "=", ("My_App-1.0",))]),
        (
            "a,b=c,d!=e,f in (g),h notin (i,j),!k",
            [
                Requirement("a", "exists"),
                Requirement("b", "=", ("c",)),
                Requirement("d", "!=", ("e",)),
                Requirement("f", "in", ("g",)),
                Requirement("h", "notin", ("i", "j")),
                Requirement("k", "!"),
            ],
        ),
    ],
)
def test_label_selector_parses(text, expected):
    assert list(parse_label_selector(text)) == expected


@pytest.mark.parametrize("text", [None, "", "   "])
def test_empty_label_selector_selects_everything(text):
    assert parse_label_selector(text) == ()
    assert labels_match((), obj()) is True


@pytest.mark.parametrize(
    "text",
    [
        # bad keys
        "-a=b", "a-=b", "x/y/z=1", "a" * 64, "a" * 64 + "=b", "/a=b", "Example.COM/a=b",
        "under_score.io/a=b", "a b", "%=1",
        # bad values
        "a=-b", "a=b-", "a=" + "b" * 64, "a=b c", "a in (x y)", "a in (-x)", "a=b=c",
        # parens
        "a in (x", "a in x)", "a in x", "(a)", "a=b)", "a in ((x))", "a in (x))", "a notin",
        # operators
        "!", "!a=b", "a!", "a!b", "a in (x) b", ",a", "a,,b",
    ],
)
def test_label_selector_parse_errors(text):
    with pytest.raises(SelectorError):
        parse_label_selector(text)


def test_label_selector_error_is_a_value_error_with_the_text():
    with pytest.raises(ValueError, match="missing '\\)'"):
        parse_label_selector("a in (x")


# -- label selector matching --------------------------------------------------------------------------


def test_equality_and_inequality():
    web, db, bare = obj({"tier": "web"}), obj({"tier": "db"}), obj({"other": "x"})
    assert sel("tier=web", web) and not sel("tier=web", db) and not sel("tier=web", bare)
    assert sel("tier==web", web)
    assert not sel("tier!=web", web) and sel("tier!=web", db)


def test_not_equal_and_notin_match_objects_without_the_label():
    bare = obj({"other": "x"})
    nolabels = obj(None)
    for o in (bare, nolabels):
        assert sel("tier!=web", o)
        assert sel("tier notin (web,db)", o)
        assert sel("!tier", o)
        assert not sel("tier", o)
        assert not sel("tier in (web)", o)


def test_set_operators():
    web, db, cache = obj({"tier": "web"}), obj({"tier": "db"}), obj({"tier": "cache"})
    assert sel("tier in (web,db)", web) and sel("tier in (web,db)", db)
    assert not sel("tier in (web,db)", cache)
    assert not sel("tier notin (web,db)", web) and sel("tier notin (web,db)", cache)
    assert sel("tier", web) and not sel("!tier", web)


def test_empty_set_members_are_empty_values_as_upstream():
    # labels.Parse reads "()" as ("") and an omitted value between commas as "".
    assert parse_label_selector("a in ()") == (Requirement("a", "in", ("",)),)
    assert parse_label_selector("a in (x,,y)") == (Requirement("a", "in", ("x", "", "y")),)
    assert parse_label_selector("a notin (x,)") == (Requirement("a", "notin", ("x", "")),)
    assert sel("a in ()", obj({"a": ""})) and not sel("a in ()", obj({"a": "x"}))


def test_empty_value_matches_an_empty_label_only():
    assert sel("a=", obj({"a": ""}))
    assert not sel("a=", obj({"a": "x"}))
    assert not sel("a=", obj({}))


def test_requirements_are_anded():
    o = obj({"app": "web", "env": "prod"})
    assert sel("app=web,env=prod", o)
    assert not sel("app=web,env=dev", o)
    assert sel("app in (web),env notin (dev),!debug", o)
    assert not sel("app=web,debug", o)


def test_label_matching_tolerates_null_labels():
    assert sel("!a", {"metadata": {"labels": None}})
    assert sel("a!=b", {})


# -- field selectors ---------------------------------------------------------------------------------

POD_FIELDS = ("spec.nodeName", "spec.hostNetwork", "status.phase")


def fsel(text: str, o: dict, supported: tuple[str, ...] = POD_FIELDS) -> bool:
    return fields_match(parse_field_selector(text, supported), o)


def test_field_selector_parses():
    assert parse_field_selector("metadata.name=a", ()) == (FieldRequirement("metadata.name", "a", False),)
    assert parse_field_selector("metadata.name==a", ()) == (FieldRequirement("metadata.name", "a", False),)
    assert parse_field_selector("metadata.name!=a", ()) == (FieldRequirement("metadata.name", "a", True),)
    assert parse_field_selector(" spec.nodeName = n1 , status.phase!=Running", POD_FIELDS) == (
        FieldRequirement("spec.nodeName", "n1", False),
        FieldRequirement("status.phase", "Running", True),
    )
    assert parse_field_selector("spec.nodeName=", POD_FIELDS) == (FieldRequirement("spec.nodeName", "", False),)
    assert parse_field_selector("", ()) == () and parse_field_selector(None, ()) == ()


def test_field_selector_metadata_fields_are_always_supported():
    assert parse_field_selector("metadata.namespace=default,metadata.name=x", ())


@pytest.mark.parametrize(
    "text",
    ["spec.nodeName=n1", "status.podIP=1.2.3.4", "metadata.labels=x", "nonsense=1"],
)
def test_unsupported_field_labels_are_errors(text):
    with pytest.raises(SelectorError, match="field label not supported"):
        parse_field_selector(text, ("status.phase",))


@pytest.mark.parametrize("text", ["noop", "=a", "metadata.name", "!=x", "==x"])
def test_field_selector_without_operator_or_key_is_an_error(text):
    with pytest.raises(SelectorError):
        parse_field_selector(text, ())


def test_field_selector_escaping():
    assert parse_field_selector(r"metadata.name=a\,b", ()) == (FieldRequirement("metadata.name", "a,b", False),)
    assert parse_field_selector(r"metadata.name=a\=b", ()) == (FieldRequirement("metadata.name", "a=b", False),)
    assert parse_field_selector(r"metadata.name=a\\b", ()) == (FieldRequirement("metadata.name", "a\\b", False),)
    # An escaped comma does not split requirements; an unescaped one does.
    two = parse_field_selector(r"metadata.name=a\,b,metadata.namespace!=c", ())
    assert two == (FieldRequirement("metadata.name", "a,b", False),
                   FieldRequirement("metadata.namespace", "c", True))
    assert fsel(r"metadata.name=a\,b", obj(name="a,b"))


@pytest.mark.parametrize("text", [r"metadata.name=a\qb", "metadata.name=a\\", "metadata.name=a=b"])
def test_field_selector_bad_escapes_are_errors(text):
    with pytest.raises(SelectorError):
        parse_field_selector(text, ())


def test_field_selector_matching():
    running = obj(spec={"nodeName": "n1"}, status={"phase": "Running"})
    pending = obj(spec={}, status={"phase": "Pending"}, name="y")
    assert fsel("spec.nodeName=n1", running) and not fsel("spec.nodeName=n1", pending)
    assert fsel("spec.nodeName!=n1", pending) and not fsel("spec.nodeName!=n1", running)
    assert fsel("spec.nodeName=", pending) and not fsel("spec.nodeName=", running)
    assert fsel("spec.nodeName!=", running)
    assert fsel("status.phase=Running,spec.nodeName=n1", running)
    assert not fsel("status.phase=Running,spec.nodeName!=n1", running)
    assert fsel("metadata.name=x", running) and fsel("metadata.name!=x", pending)
    assert fsel("metadata.namespace=default", running)


def test_field_selector_bool_values():
    host = obj(spec={"hostNetwork": True})
    pod = obj(spec={"hostNetwork": False})
    unset = obj(spec={})
    assert field_value(host, "spec.hostNetwork") == "true"
    assert field_value(pod, "spec.hostNetwork") == "false"
    assert field_value(unset, "spec.hostNetwork") == "false"  # a Go bool's zero value
    assert fsel("spec.hostNetwork=true", host) and not fsel("spec.hostNetwork=true", unset)
    assert fsel("spec.hostNetwork=false", unset) and fsel("spec.hostNetwork!=true", pod)
    node = obj(spec={"unschedulable": True})
    assert field_value(node, "spec.unschedulable") == "true"
    assert field_value(obj(), "spec.unschedulable") == "false"


def test_field_value_of_odd_shapes():
    assert field_value({"spec": "not-a-dict"}, "spec.nodeName") == ""
    assert field_value({}, "status.phase") == ""
    assert field_value({"spec": {"replicas": 3}}, "spec.replicas") == "3"
    assert field_value({"source": {"component": "kubelet"}}, "source") == "kubelet"
    assert field_value({}, "source") == ""


def test_matcher_combines_labels_and_fields():
    assert matcher((), ()) is None
    m = matcher(parse_label_selector("app=web"), parse_field_selector("metadata.name=x", ()))
    assert m(obj({"app": "web"}, name="x"))
    assert not m(obj({"app": "web"}, name="y"))
    assert not m(obj({"app": "db"}, name="x"))
