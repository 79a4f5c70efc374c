"""Several pictures as one, rows of equal height - how the README's drawn detections are made from the
pictures ``mobilenets predict --out`` writes:

    mobilenets predict --checkpoint runs/person-512/best.pt IMAGE... --test-tiles --test-flip --out drawn
    python benchmarks/contact_sheet.py drawn/*.png --columns 3 --height 300 --out sheet.jpg

Each picture is scaled to ``--height`` pixels, keeping its shape; ``--columns`` of them make a row, and the
rows are stacked, left-aligned on white (a row of wide pictures is wider than one of tall ones).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from mobilenets.validate import POSITIVE_INT

GAP = 8  # white pixels between pictures, so their edges do not run together


def contact_sheet(paths: list[Path], columns: int, height: int):
    """One RGB picture of ``paths`` at ``height`` pixels each, ``columns`` to a row, in order."""
    from PIL import Image

    scaled = []
    for path in paths:
        with Image.open(path) as picture:
            width = round(picture.width * height / picture.height)
            scaled.append(picture.convert("RGB").resize((width, height), Image.Resampling.LANCZOS))
    rows = [scaled[start:start + columns] for start in range(0, len(scaled), columns)]  # fmt: skip
    sheet_width = max(sum(p.width for p in row) + GAP * (len(row) - 1) for row in rows)
    sheet = Image.new("RGB", (sheet_width, len(rows) * height + GAP * (len(rows) - 1)), "white")
    for index, row in enumerate(rows):
        left = 0
        for picture in row:
            sheet.paste(picture, (left, index * (height + GAP)))
            left += picture.width + GAP
    return sheet


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("pictures", nargs="+", type=Path, help="the pictures, in reading order")
    parser.add_argument("--columns", type=POSITIVE_INT.argtype, default=3, help="pictures per row (default 3)")
    parser.add_argument("--height", type=POSITIVE_INT.argtype, default=300,
                        help="each picture's height in pixels (default 300)")  # fmt: skip
    parser.add_argument("--out", type=Path, required=True, help="the sheet (.jpg or .png)")
    args = parser.parse_args(argv)
    missing = [str(path) for path in args.pictures if not path.is_file()]
    if missing:
        parser.error(f"no such picture: {', '.join(missing)}")
    from mobilenets.files import atomic_write

    sheet = contact_sheet(args.pictures, args.columns, args.height)
    kind = "JPEG" if args.out.suffix.lower() in (".jpg", ".jpeg") else "PNG"
    atomic_write(args.out, lambda tmp: sheet.save(tmp, format=kind, quality=90))
    print(f"{len(args.pictures)} pictures, {sheet.width}x{sheet.height}: {args.out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
