"""Printing and saving a benchmark's ratios, and flagging drops against the previous run's."""
from __future__ import annotations

import datetime as dt
import json
import platform
from collections.abc import Iterable
from pathlib import Path
from typing import Any

REGRESSION = 0.9


def report(path: Path, baseline: float, rates: dict[str, float], unit: str, details: dict[str, Any],
           informational: Iterable[str] = ()) -> int:
    """Print each series' rate and ratio to `baseline`, write them to `path`; 1 if a ratio fell by over 10 %."""
    previous = json.loads(path.read_text()).get("ratios", {}) if path.exists() else {}
    result: dict[str, Any] = {"date": dt.date.today().isoformat(), "machine": f"{platform.machine()} {platform.node()}",
                              **details, f"baseline_{unit}_per_s": round(baseline), f"{unit}_per_s": {}, "ratios": {}}
    print(f"{'series':<10} {unit + '/s':>10} {'ratio':>7}  previous")
    print(f"{'baseline':<10} {baseline:>10.0f} {1.0:>7.2f}")
    regressions = []
    for name, rate in rates.items():
        ratio = rate / baseline
        result[f"{unit}_per_s"][name] = round(rate)
        result["ratios"][name] = round(ratio, 3)
        before = previous.get(name)
        flag = ""
        if before:
            fell = ratio < before * REGRESSION
            flag = f"{before:.2f}" + ("  REGRESSION (>10 % lower)" if fell else "")
            if fell and name not in informational:
                regressions.append(name)
        print(f"{name:<10} {rate:>10.0f} {ratio:>7.2f}  {flag}")
    path.write_text(json.dumps(result, indent=2) + "\n")
    print(f"written {path}")
    return 1 if regressions else 0
