"""Header buttons that point at the files a visitor can open.

The figure pages live in ``notebooks/`` and reach the book through the link ``book/notebooks``.
The theme builds its launch (Binder, Colab) and source buttons from the page's path inside the
book, ``book/notebooks/<page>.ipynb``; on GitHub that path is a link, which Colab cannot open.
This extension rewrites each button to the file's real path in the repository,
``notebooks/<page>.ipynb``. Pages that are not behind a link keep their URLs.
"""
from __future__ import annotations

from pathlib import Path


def _rewrite(buttons, old: str, new: str) -> None:
    for button in buttons or []:
        if isinstance(button, dict):
            if isinstance(button.get("url"), str):
                button["url"] = button["url"].replace(old, new)
            _rewrite(button.get("buttons"), old, new)


def real_paths(app, pagename, templatename, context, doctree) -> None:
    book = app.config.html_theme_options.get("path_to_docs", "").strip("/")
    src = Path(app.env.doc2path(pagename))
    if not src.exists():
        return
    root = Path(app.srcdir).resolve().joinpath(*[".."] * len(Path(book).parts)).resolve()
    try:
        real = src.resolve().relative_to(root).with_suffix("").as_posix()
    except ValueError:
        return
    linked = f"{book}/{pagename}" if book else pagename
    if real != linked:   # the same stem for every suffix a button names (.ipynb, .py, .md)
        _rewrite(context.get("header_buttons"), f"/{linked}.", f"/{real}.")


def setup(app):
    # after sphinx-book-theme's launch and source buttons (priority 501)
    app.connect("html-page-context", real_paths, priority=600)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
