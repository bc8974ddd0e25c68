"""Generate the default MuJoCo tabletop episode set (train, val, heldout) as HDF5 files.

Usage, from the repository root:

    python examples/generate_episodes.py --out data/episodes --workers 2

All options are those of `python -m tracker.generate --help`.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from tracker.generate import main

if __name__ == "__main__":
    main()
