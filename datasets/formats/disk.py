"""What the formats need from the disk besides their own files: image sizes from headers, class-name lists, XML
parsed safely with line numbers, images placed into an output layout, and outputs that appear whole or not at all."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path, PurePosixPath
from typing import Any

from cnnapps.datasets.formats.hub import FormatError, Report
from cnnapps.errors import repeated_name
from cnnapps.files import OutputExistsError, moved_if_free
from cnnapps.yamltext import load_yaml

#: the image files the formats look for (those ``cnnapps.datasets.io`` decodes)
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".tif", ".tiff", ".gif")

#: how images reach an output: copies, hard links (copies where a link cannot be made), or not at all
IMAGE_MODES = ("copy", "link", "none")


def is_image(path: Path) -> bool:
    return path.suffix.lower() in IMAGE_SUFFIXES


def image_size(path: Path) -> tuple[int, int]:
    """(width, height) as the image is shown (EXIF rotation applied), from the file's header: nothing is decoded.
    Raises ``OSError`` for a missing or unreadable file."""
    import warnings

    from PIL import Image

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # a large image is fine here: only its header is read
        try:
            with Image.open(path) as im:
                width, height = im.size
                try:
                    orientation = im.getexif().get(0x0112, 1)
                except Exception:  # a broken EXIF block: the stored size stands
                    orientation = 1
        except Image.DecompressionBombError as exc:
            raise OSError(f"larger than Pillow's pixel limit ({exc})") from None
        except (Image.UnidentifiedImageError, ValueError, SyntaxError) as exc:
            raise OSError(f"not a readable image ({exc})") from None
    return (height, width) if orientation in (5, 6, 7, 8) else (width, height)


def size_or_skip(path: Path | None, report: Report, where: object, what: str) -> tuple[int, int] | None:
    """The image's size, or ``None`` after reporting ``where: what`` and why it could not be read."""
    if path is None or not path.is_file():
        report.skip(where, f"{what}; the image {path} was not found" if path else what, "unreadable_image")
        return None
    try:
        return image_size(path)
    except OSError as exc:
        report.skip(where, f"{what}; the image {path} could not be read ({exc.strerror or exc})", "unreadable_image")
        return None


def images_root(candidates: list[Path | None], file_names: list[str]) -> Path | None:
    """The first existing candidate folder that holds one of the first few ``file_names`` (``None`` if none does)."""
    folders = [c for c in candidates if c is not None and c.is_dir()]
    for folder in folders:
        if any((folder / name).is_file() for name in file_names[:5]):
            return folder
    return folders[0] if folders else None


def read_names(path: Path) -> list[str]:
    """Class names in order: one per line (blank lines and LabelMe's ``__ignore__``/``_background_`` skipped), or a
    YAML/JSON file with a ``names`` list or {index: name} mapping (as ultralytics' data.yaml)."""
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise FormatError(f"{path}: cannot read the class names ({getattr(exc, 'strerror', None) or exc})") from None
    if path.suffix.lower() in (".yaml", ".yml", ".json"):
        import yaml

        try:
            data = load_yaml(text)
        except yaml.YAMLError as exc:
            raise FormatError(f"{path}: not valid YAML ({str(exc).splitlines()[0]})") from None
        return names_from(data.get("names") if isinstance(data, dict) else data, path)
    names = [line.strip() for line in text.splitlines()]
    names = [n for n in names if n and n not in ("__ignore__", "_background_")]
    if not names:
        raise FormatError(f"{path}: no class names (one per line)")
    return distinct(names, path)


def distinct(names: list[str], source: object) -> list[str]:
    """``names``, or a one-line error where one is given twice: two class indices of one name were read as one class
    (a YOLO label of the second index then named a class that was not there, or the next class)."""
    twice = repeated_name(names)
    if twice is not None:
        name, i, j = twice
        raise FormatError(f"{source}: class name {name!r} is given twice (indices {i} and {j}): each class needs a "
                          "name of its own")  # fmt: skip
    return names


def names_from(value: Any, source: object) -> list[str]:
    """A ``names`` entry (a list, or a mapping from 0..n-1 to names) as a list; anything else is a one-line error."""
    if isinstance(value, list) and value:
        return distinct([str(v) for v in value], source)
    if isinstance(value, dict) and value:
        try:
            keyed = {int(k): str(v) for k, v in value.items()}
        except (TypeError, ValueError):
            keyed = {}
        if sorted(keyed) == list(range(len(keyed))):
            return distinct([keyed[i] for i in range(len(keyed))], source)
        raise FormatError(f"{source}: names: the keys must be the class indices 0..{len(value) - 1}")
    raise FormatError(f"{source}: names: expected a list of class names or a mapping of index to name")


def parse_xml(path: Path) -> tuple[Any, dict[Any, int]]:
    """An XML file's root element and the line of each element, parsed by defusedxml (entity declarations,
    DTDs and external references are refused, so a file cannot expand to gigabytes or read other files).
    Raises ``ValueError`` with a one-line reason."""
    from xml.etree.ElementTree import ParseError, TreeBuilder

    from defusedxml.common import DefusedXmlException
    from defusedxml.ElementTree import DefusedXMLParser

    class Target:
        def __init__(self) -> None:
            self.builder, self.lines, self.expat = TreeBuilder(), {}, None

        def start(self, tag: str, attrs: dict[str, str]) -> Any:
            element = self.builder.start(tag, attrs)
            self.lines[element] = self.expat.CurrentLineNumber
            return element

        def end(self, tag: str) -> Any:
            return self.builder.end(tag)

        def data(self, text: str) -> None:
            self.builder.data(text)

        def close(self) -> Any:
            return self.builder.close()

    target = Target()
    parser = DefusedXMLParser(target=target, forbid_dtd=True)
    target.expat = parser.parser
    try:
        parser.feed(path.read_bytes())
        root = parser.close()
    except ParseError as exc:
        raise ValueError(f"not valid XML ({exc})") from None
    except DefusedXmlException as exc:
        raise ValueError(f"XML refused: {type(exc).__name__} ({exc})") from None
    except OSError as exc:
        raise ValueError(f"cannot read this file ({exc.strerror or exc})") from None
    return root, target.lines


def safe_relative(file_name: str) -> PurePosixPath:
    """A ``file_name`` as a path that stays inside an output folder (no root, no ``..``)."""
    parts = [p for p in file_name.replace("\\", "/").split("/") if p not in ("", ".", "..")]
    return PurePosixPath(*parts) if parts else PurePosixPath("image")


def images_in_place(files: dict[int, Path], names: dict[int, str], report: Report) -> dict[int, Path]:
    """The image files an output that leaves the images where they are can name (those on disk, by image id); the
    others are said in one note (``names``: each image's ``file_name``): the output names them as the source does."""
    found = {image_id: file for image_id, file in files.items() if file.is_file()}
    missing = [name for image_id, name in names.items() if image_id not in found]
    if missing:
        listed = ", ".join(missing[:3]) + (", ..." if len(missing) > 3 else "")
        report.note(
            f"{len(missing)} image{'s' if len(missing) > 1 else ''} not found where the source names "
            f"{'them' if len(missing) > 1 else 'it'} ({listed}): written with the source's file names"
        )
    return found


def path_from(folder: Path, file: Path) -> str:
    """``file`` as an annotation file in ``folder`` names it: the relative path from there (``/``-separated), up
    from the folder as it is on disk (``..`` climbs real folders, not symlinks) and down by the path the image was
    found at (a symlinked image folder keeps its name); absolute where no relative path exists (another drive)."""
    target = file.parent.resolve() / file.name if ".." in file.parts else file.absolute()
    try:
        return Path(os.path.relpath(target, folder.resolve())).as_posix()
    except ValueError:
        return target.as_posix()


def place_images(files: dict[int, Path], targets: dict[int, Path], mode: str, report: Report) -> int:
    """Copy or hard-link each image to its target path (a link falls back to a copy across drives); an image that
    is not there is reported. Returns how many were placed."""
    placed = 0
    for image_id, target in targets.items():
        source = files.get(image_id)
        if source is None or not source.is_file():
            report.skip(source or target.name, "image not found; not placed in the output")
            continue
        target.parent.mkdir(parents=True, exist_ok=True)
        if mode == "link":
            try:
                os.link(source, target)
                placed += 1
                continue
            except OSError:
                pass
        shutil.copy2(source, target)
        placed += 1
    return placed


def check_free(out: Path) -> None:
    """Refuse an output path that exists (nothing the user has is overwritten)."""
    if os.path.lexists(out):
        raise OutputExistsError(out)


@contextmanager
def staged(out: Path) -> Iterator[Path]:
    """A temporary path beside ``out`` to write the whole output to; renamed to ``out`` when the block ends without
    an error, removed with everything in it when it fails (a failed run leaves nothing half-written)."""
    check_free(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    stage = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".part", dir=out.parent))
    try:
        yield stage / out.name
        _move_in(stage / out.name, out)
    finally:
        shutil.rmtree(stage, ignore_errors=True)


def _move_in(made: Path, out: Path) -> None:
    """``made`` renamed to ``out``, never over what took that name while it was written (a look, then a rename,
    would replace a file made in between): a file is linked there (:func:`~cnnapps.files.moved_if_free`); a folder
    first takes the name with an empty folder of its own, which it then replaces."""
    if not made.is_dir():
        if not moved_if_free(made, out):
            raise OutputExistsError(out)
        return
    try:
        os.mkdir(out)
    except FileExistsError:
        raise OutputExistsError(out) from None
    try:
        os.replace(made, out)  # a folder onto the empty one just made: one step
    except OSError:  # a system that does not replace folders: look, then rename (a narrow race remains)
        os.rmdir(out)
        check_free(out)
        os.rename(made, out)


def walk(root: Path, keep: Callable[[Path], bool]) -> list[Path]:
    """Files under ``root`` that ``keep`` accepts, sorted: recursively, symlinked folders walked once, hidden
    folders skipped."""
    found, seen = [], set()
    for folder, dirs, names in os.walk(root, followlinks=True):
        real = os.path.realpath(folder)
        if real in seen:  # a symlinked folder met twice (or a loop): walked once
            dirs[:] = []
            continue
        seen.add(real)
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        found.extend(Path(folder) / n for n in names if keep(Path(folder) / n))
    return sorted(found)
