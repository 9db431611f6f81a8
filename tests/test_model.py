"""The Model facade: describe(), declaration sites, and names that cannot clash with what gdag derives."""

import pytest

import gdag


def test_describe_lists_families():
    m = gdag.Model("d")
    m.normal("a", plate=m.plate("p", 4))
    text = m.describe()
    assert "Model `d`: 4 scalar variables" in text and "a" in text and "p" in text


def test_declaration_site_is_recorded():
    m = gdag.Model()
    a = m.normal("a")
    assert a.site.startswith("test_model.py:")


def test_node_names_cannot_collide_with_compiled_caches():
    # the compiled model caches derived arrays; a node may have any valid name
    for name in ("deterministic", "sd_entries", "B_scale", "__sd_entries"):
        m = gdag.Model("names")
        s = m.param("s", value=3.0, positive=True)
        a = m.normal("a", mean=0.0, sd=s)
        m.normal(name, mean=a, sd=1.0)
        post = m.posterior({name: 1.0})
        # a ~ N(0, 9), y | a ~ N(a, 1): E[a | y = 1] = 9 / 10
        assert post.mean("a") == pytest.approx(0.9, rel=1e-12)
        with pytest.raises(gdag.ModelError):
            post.mean("B_scale" if name != "B_scale" else "sd_entries")


def test_labels_of_many_entries_are_the_one_label_format():
    import numpy as np

    from gdag.spec import label, labels

    entries = np.array([0, 7, 12])
    assert list(labels("u", "subj", entries)) == [label("u", "subj", int(k)) for k in entries] == [
        "u[subj=0]", "u[subj=7]", "u[subj=12]"]
    assert list(labels("R", None, np.arange(1))) == ["R"] == [label("R", None, 0)]
