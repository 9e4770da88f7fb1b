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
    head = f"## {title}\n"  # the whole heading line: "## x" must not match "## x (GPU)"
    if head in text:
        start = text.index(head)
        end = text.find("\n## ", start + len(head))
        text = text[:start] + body.rstrip("\n") + "\n" + (text[end:] if end != -1 else "")
    else:
        text = text.rstrip("\n") + "\n\n" + body
    RESULTS.write_text(text)


def describe_machine(device: str = "cpu") -> str:
    """The card (or the CPU model and its cores), torch's version and Python's: what a figure was measured on."""
    import os
    import platform

    import torch

    if str(device).startswith("cuda"):
        card = torch.cuda.get_device_name(torch.device(device))
        card += f" ({torch.cuda.get_device_properties(torch.device(device)).total_memory / 2**30:.0f} GiB)"
    else:
        card = platform.processor() or platform.machine()
        try:
            with open("/proc/cpuinfo") as info:
                card = next(line.split(":", 1)[1].strip() for line in info if line.startswith("model name"))
        except (OSError, StopIteration):
            pass
        card += f", {os.cpu_count()} cores, {torch.get_num_threads()} torch threads"
    return f"{card}; torch {torch.__version__}, Python {platform.python_version()}"


def resolve_device(device: str) -> str:
    """``auto``: cuda when there is a GPU, else cpu."""
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return device
