"""Print a benchmark's report and, when asked, record it as a section of benchmarks/RESULTS.md."""

from __future__ import annotations

from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "RESULTS.md"


def record(title: str, body: str, write: bool) -> None:
    """Print ``body``; with ``write`` replace the ``## title`` section of RESULTS.md (or append it)."""
    print(body)
    if not write:
        return
    text = RESULTS.read_text() if RESULTS.exists() else "# Benchmark results\n\n"
    head = f"## {title}"
    if head in text:
        start = text.index(head)
        end = text.find("\n## ", start + len(head))
        text = text[:start] + body.rstrip("\n") + "\n" + (text[end:] if end != -1 else "")
    else:
        text = text.rstrip("\n") + "\n\n" + body
    RESULTS.write_text(text)
