"""Turn scikit-learn's handwritten digits into an image folder: python scripts/make_digits.py data/digits"""

import sys

from cnnapps.datasets.digits import export_digits

if __name__ == "__main__":
    if any(arg in ("-h", "--help") for arg in sys.argv[1:]) or len(sys.argv) > 2:
        print(__doc__.strip())
        print("usage: python scripts/make_digits.py [OUT_FOLDER]  (default: data/digits)")
        sys.exit(0 if len(sys.argv) == 2 else 2)
    out = sys.argv[1] if len(sys.argv) > 1 else "data/digits"
    counts = export_digits(out)
    print(f"{out}: {counts['train']} training and {counts['val']} validation images in 10 class folders")
