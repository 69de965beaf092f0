"""Backend registry: names → classes, lazy built-ins, clear errors."""

import pytest

from debias3d import registry


def test_register_and_find():
    @registry.register("ranker", "test-toy-ranker")
    class Toy:
        pass

    assert registry.find("ranker", "test-toy-ranker") is Toy
    assert "test-toy-ranker" in registry.available("ranker")
    assert isinstance(registry.build("ranker", "test-toy-ranker"), Toy)


def test_duplicate_name_rejected():
    @registry.register("llm", "test-dup")
    class A:
        pass

    with pytest.raises(ValueError, match="already registered"):

        @registry.register("llm", "test-dup")
        class B:
            pass


def test_unknown_names_list_choices():
    with pytest.raises(KeyError, match="available:.*mini-trellis"):
        registry.find("generator", "does-not-exist")
    with pytest.raises(KeyError, match="unknown backend kind"):
        registry.find("vocoder", "x")


def test_lazy_builtin_is_declared_not_imported():
    assert "mini-trellis" in registry.available("generator")
    assert "shapeworld" in registry.available("external_generator")
