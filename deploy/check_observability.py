"""Checks the Grafana dashboard and the Prometheus alert rules in deploy/ against the code.

Both must parse, every rule needs an expression, a severity and a runbook link into
docs/operations.md, and every agentplane_* metric they query must be one the binaries
register (named as a string in their sources), so a renamed metric cannot leave a panel or
an alert silently empty.

    python3 deploy/check_observability.py
"""

import json
import pathlib
import re
import sys

import yaml

ROOT = pathlib.Path(__file__).resolve().parent.parent
SOURCES = ["control-plane/src", "worker/src", "telemetry/src"]
METRIC = re.compile(r"agentplane_[a-z_]+")
SUFFIXES = ("_bucket", "_count", "_sum")


def registered():
    names = set()
    for folder in SOURCES:
        for path in (ROOT / folder).rglob("*.rs"):
            names.update(re.findall(r'"(agentplane_[a-z_]+)"', path.read_text()))
    return names


def base(name):
    for suffix in SUFFIXES:
        if name.endswith(suffix) and name[: -len(suffix)]:
            return name[: -len(suffix)]
    return name


def main():
    known = registered()
    problems = []
    operations = (ROOT / "docs/operations.md").read_text().lower()
    rules = yaml.safe_load((ROOT / "deploy/prometheus/alerts.yaml").read_text())
    used = []
    for group in rules["groups"]:
        for rule in group["rules"]:
            name = rule.get("alert", "?")
            for key in ("expr", "for"):
                if key not in rule:
                    problems.append(f"alert {name}: no {key}")
            if "severity" not in rule.get("labels", {}):
                problems.append(f"alert {name}: no severity label")
            anchor = rule.get("annotations", {}).get("runbook", "").partition("#")[2]
            if not anchor or f"### {anchor}" not in operations:
                problems.append(f"alert {name}: runbook anchor {anchor!r} is not a heading of docs/operations.md")
            used += [(f"alert {name}", m) for m in METRIC.findall(rule.get("expr", ""))]
    dashboard = json.loads((ROOT / "deploy/grafana/agentplane.json").read_text())
    for panel in dashboard["panels"]:
        for target in panel.get("targets", []):
            used += [(f"panel {panel['title']!r}", m) for m in METRIC.findall(target["expr"])]
    for where, metric in used:
        if metric not in known and base(metric) not in known:
            problems.append(f"{where}: {metric} is not a metric the binaries register")
    for problem in problems:
        print(problem)
    print(f"{len(used)} metric references checked, {len(problems)} problems")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
