"""
Print the pack's pinned dependencies from setup.cfg, one a line:
install_requires and the tests extra, or with --runtime install_requires only.
"""

import configparser
import pathlib
import sys

cfg = configparser.ConfigParser()
cfg.read(pathlib.Path(__file__).resolve().parent.parent / "setup.cfg")
sections = [cfg["options"]["install_requires"]]
if "--runtime" not in sys.argv:
    sections.append(cfg["options.extras_require"]["tests"])
for section in sections:
    for line in section.splitlines():
        if line.strip():
            print(line.strip())
