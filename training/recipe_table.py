"""The recipe table of docs/training.md, generated from :data:`training.recipes.RECIPES`.

``python -m training.recipe_table --write docs/training.md`` (``make docs``) replaces the block
between ``<!-- recipes:start -->`` and ``<!-- recipes:end -->``; a test checks it is current, so a
new recipe cannot be missing from the docs.
"""

from __future__ import annotations

from lookaside import docblock
from training.recipes import RECIPES


def table() -> str:
    """One row per recipe: its name, what it sets (dataset, method, backbone) and its source."""
    rows = ["| recipe | dataset | method | source and settings |", "|---|---|---|---|"]
    for recipe in RECIPES.values():
        dataset = recipe.settings.get("dataset", "")
        method = recipe.settings.get("method", "")
        doc = recipe.doc.replace("|", "\\|")
        rows.append(f"| `{recipe.name}` | {dataset} | {method} | {doc} |")
    return "\n".join(rows)


def main(argv: list[str] | None = None) -> None:
    docblock.main("recipes", table, __doc__.split("\n")[0], argv)


if __name__ == "__main__":
    main()
