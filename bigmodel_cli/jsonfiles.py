"""JSON files of a run directory (metrics.json, labels.json, run.json, meta.json).

No torch here: the CLI and the Hydra task wrapper use it before any model code loads.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any


def clean_json(value: Any) -> Any:
    """NaN becomes null and infinities strings, so the files stay valid JSON."""
    if isinstance(value, float) and not math.isfinite(value):
        return None if math.isnan(value) else str(value)
    if isinstance(value, dict):
        return {k: clean_json(v) for k, v in value.items()}
    return value


def write_json(path: Path, data: Any) -> None:
    """Write JSON atomically (temporary file, then rename). The temporary name carries the
    pid, so two processes writing one file never rename each other's half-written one."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(clean_json(data), indent=2, ensure_ascii=False, default=str) + "\n",
                   encoding="utf-8")
    tmp.replace(path)
