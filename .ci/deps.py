"""Print the pack's pinned dependencies (install_requires + the tests extra) from setup.cfg, one a line."""

import configparser
import pathlib

cfg = configparser.ConfigParser()
cfg.read(pathlib.Path(__file__).resolve().parent.parent / "setup.cfg")
for key in ("install_requires",):
    for line in cfg["options"][key].splitlines():
        if line.strip():
            print(line.strip())
for line in cfg["options.extras_require"]["tests"].splitlines():
    if line.strip():
        print(line.strip())
