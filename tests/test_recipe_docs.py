"""The recipe reference documents every field the recipe model accepts."""

from conftest import REPO

from factory.recipe import reference_rows


def test_every_recipe_field_is_in_the_reference():
    doc = (REPO / "docs" / "recipe-reference.md").read_text()
    missing = [path for path, *_ in reference_rows() if f"`{path}`" not in doc]
    assert missing == []
