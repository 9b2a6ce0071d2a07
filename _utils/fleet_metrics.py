"""
Prometheus textfile output (node_exporter's textfile collector), shared by
the env beacon, the release runner and the power sweeps: render metric
families to the text format and write the file atomically.
"""

import math
import os
import tempfile


def _escape(value):
    return str(value).replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _labels(labels):
    return "{" + ",".join(f'{k}="{_escape(v)}"' for k, v in labels.items()) + "}"


def _fmt(value):
    if isinstance(value, bool):
        return "1" if value else "0"
    if isinstance(value, int):
        return str(value)
    return repr(float(value))


def render(families):
    """
    ``families``: ``[(name, kind, help, [(labels dict, value), ...]), ...]``.
    Samples whose value is ``None`` are left out (no stale figure); a family
    with no sample is left out whole. No timestamps. ValueError on a
    non-finite value.
    """
    lines = []
    for name, kind, help_text, samples in families:
        rows = [(labels, value) for labels, value in samples if value is not None]
        if not rows:
            continue
        lines.append(f"# HELP {name} {help_text}")
        lines.append(f"# TYPE {name} {kind}")
        for labels, value in rows:
            if isinstance(value, float) and not math.isfinite(value):
                raise ValueError(f"{name}: {value!r} is not a finite number")
            lines.append(f"{name}{_labels(labels)} {_fmt(value)}")
    return "\n".join(lines) + "\n"


def write_textfile(directory, name, text, field="textfile_dir"):
    """
    Write ``text`` to ``directory/name`` atomically: a temp file in the same
    directory (not ending in .prom, so node_exporter never reads it half
    written), then ``os.replace``. Returns the path.
    """
    if not isinstance(directory, str) or not os.path.isdir(directory):
        raise ValueError(f"{field}: {directory!r} is not an existing directory")
    if not isinstance(name, str) or "/" in name or not name.endswith(".prom"):
        raise ValueError(f"name: {name!r} must be a file name ending in .prom")
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=f".{name[:-5]}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(tmp, 0o644)
        path = os.path.join(directory, name)
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
    return path
