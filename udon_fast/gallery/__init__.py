"""Result galleries: HTML pages of queries and their nearest neighbours, with thumbnails.

- `retrieval`: the merged-index top-5 of every test query, marked correct or wrong, and the seeded
  sample of queries a page shows (numpy, from the embeddings evaluation computed).
- `render`: Jinja2 templates (package data under templates/) and thumbnails copied into the output
  folder; every link relative, so the folder can be moved or zipped.
- `write_gallery` (evaluate, train) and `write_search_page` (search --html) are the entry points.
"""

from .render import write_gallery, write_search_page
from .retrieval import Hit, MergedSearch, QueryResult, compare, merged_search, sample_rows

__all__ = [
    "Hit",
    "MergedSearch",
    "QueryResult",
    "compare",
    "merged_search",
    "sample_rows",
    "write_gallery",
    "write_search_page",
]
