"""``dfkd-report DIR...``: runs on disk -> one seed-aggregated results table, curves, a static page.

Any folder holding ``metrics.json`` (written when a run ends, with its status) or
``progress.json`` (written during a run: one without metrics.json never ended) is a run
(single runs, multiruns, ``dfkd-bench`` dirs alike). Runs of one method that differ only in their seed form one row: mean +- std over the
seeds of every figure. Runs of one method that differ in other overrides are separate rows, and
the ``differs`` column names those overrides. Outputs: ``<stem>.md``, ``<stem>.json``,
``<stem>.csv``, matplotlib figures, and ``report.html``, which links the figures by relative
path so the folder opens in a browser with no server and can be copied anywhere.
"""

import argparse
import csv
import html
import json
import math
import os
import re
import statistics
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import yaml
from PIL import Image, ImageDraw, ImageFont

from .config import network_name

# metrics.json key -> row key, and the factor that turns it into the unit the table shows
METRICS = {
    "teacher/acc": ("teacher_acc", 100),
    "test/acc": ("acc", 100),
    "test/acc_best": ("acc_best", 100),
    "cost/synthesis_s": ("synthesis_s", 1),
    "cost/kd_s": ("kd_s", 1),
    "cost/images": ("images", 1),
    "cost/images_per_s": ("images_per_s", 1),
    "cost/teacher_forwards": ("teacher_passes", 1),
    "mem/peak_mb": ("peak_mb", 1),
    "time/total_s": ("total_s", 1),
}

# the figures averaged over seeds: (row key, header, decimals)
FIGURES = [
    ("acc", "final acc %", 2),
    ("acc_best", "best acc %", 2),
    ("acc_q1", "acc % at 1/4 budget", 2),
    ("acc_q2", "acc % at 1/2 budget", 2),
    ("synthesis_s", "synthesis s", 0),
    ("kd_s", "KD s", 0),
    ("images", "images made", 0),
    ("images_per_s", "images/s", 1),
    ("teacher_passes", "teacher passes", 0),
    ("peak_mb", "peak MB", 0),
    ("total_s", "total s", 0),
    ("teacher_acc", "teacher acc %", 2),
]
# what names a row
LABELS = [("method", "method"), ("transfer", "student learns from"), ("data", "data"), ("teacher", "teacher"),
          ("student", "student"), ("differs", "differs")]
RUN_COLUMNS = [*LABELS, ("seed", "seed"), *[(k, h) for k, h, _ in FIGURES], ("status", "status"),
               ("run", "run dir")]
ROW_COLUMNS = [*LABELS, ("seeds", "seeds"), *[(k, h) for k, h, _ in FIGURES], ("status", "status")]
DECIMALS = {k: d for k, _, d in FIGURES} | {"share": 1}

# overrides that never distinguish one row from another: the seed (averaged over), the method
# (its own column), and where or how a run was launched and logged
NOT_A_SETTING = {"seed", "method", "task_name", "resume", "trainer.enable_progress_bar"}
NOT_A_SETTING_PREFIXES = ("hydra.", "logger", "paths.")

# evaluation axes a budget is counted in: curve.jsonl key -> axis label
TIME_AXIS, PASS_AXIS = "time_s", "cost/teacher_forwards"


# A run with progress but no end record: killed (SIGKILL, out of memory, node lost) or still running.
UNFINISHED = "unfinished (killed, or still running)"


def run_status(metrics: dict) -> str:
    """``finished``, ``stopped`` or ``failed: ...`` as the run recorded it; runs written before
    the status field count as finished when they wrote their final metrics (the total time). One
    line: an error's message may span several, which would split a table's row."""
    if "status" in metrics:
        return " ".join(str(metrics["status"]).split())
    return "finished" if "time/total_s" in metrics else "stopped (no final metrics)"


@dataclass
class Run:
    dir: Path
    config: dict
    metrics: dict
    overrides: list = field(default_factory=list)
    curve: list = field(default_factory=list)
    samples: Path | None = None

    @property
    def method(self) -> str:
        return (self.config.get("method") or {}).get("name") or self.dir.name

    @property
    def status(self) -> str:
        return run_status(self.metrics)

    @property
    def finished(self) -> bool:
        return self.status == "finished"

    @property
    def setting(self) -> tuple:
        """The run's overrides that are not its seed, method or launch details."""
        def key(override: str) -> str:
            return override.lstrip("+~").split("=", 1)[0]

        return tuple(sorted(o for o in self.overrides
                            if key(o) not in NOT_A_SETTING and not key(o).startswith(NOT_A_SETTING_PREFIXES)))


def find_runs(paths) -> list[Path]:
    """Every run dir under ``paths`` (a dir with metrics.json or progress.json), in a stable order."""
    found = []
    for path in map(Path, paths):
        if not path.is_dir():
            raise FileNotFoundError(f"{path} is not a directory of runs")
        found += [p.parent for name in ("metrics.json", "progress.json") for p in path.rglob(name)]
    return sorted(set(found))


def _yaml(path: Path):
    return yaml.safe_load(path.read_text()) if path.is_file() else None


def read_json(path: Path) -> dict:
    """A run's JSON record; one that does not parse is named, with what to do."""
    try:
        return json.loads(path.read_text())
    except ValueError as err:
        raise ValueError(f"{path} is not valid JSON ({err}); fix it or remove it") from err


def read_curve(path: Path) -> list[dict]:
    """A run's ``curve.jsonl``, one evaluation a line. A last line cut short (the run was killed,
    or the disk filled, as it was appended) is left out; any other line that does not parse is named."""
    if not path.is_file():
        return []
    lines = [line for line in path.read_text().splitlines() if line.strip()]
    rows = []
    for number, line in enumerate(lines, 1):
        try:
            rows.append(json.loads(line))
        except ValueError as err:
            if number < len(lines):
                raise ValueError(f"{path}, line {number}, is not valid JSON ({err}); fix it or remove it") from err
    return rows


def finished_metrics(run_dir: Path) -> dict | None:
    """The final metrics of the run in ``run_dir`` if it finished, else None (a metrics.json that
    does not parse is no record of a finished run)."""
    path = Path(run_dir) / "metrics.json"
    try:
        metrics = read_json(path) if path.is_file() else None
    except ValueError:
        return None
    return metrics if metrics is not None and run_status(metrics) == "finished" else None


def load_run(path: Path) -> Run:
    config = _yaml(path / ".hydra" / "config.yaml") or {}
    overrides = _yaml(path / ".hydra" / "overrides.yaml") or []
    ended = path / "metrics.json"
    metrics = read_json(ended) if ended.is_file() else {**read_json(path / "progress.json"), "status": UNFINISHED}
    curve = read_curve(path / "curve.jsonl")
    samples = path / "samples" / "latest.png"
    return Run(path, config, metrics, overrides, curve, samples if samples.is_file() else None)


# --- budgets and the curve ---------------------------------------------------------------------
def max_time_s(value) -> float | None:
    """Lightning's ``trainer.max_time`` (``DD:HH:MM:SS`` or a dict) in seconds."""
    if not value:
        return None
    if isinstance(value, dict):
        return sum(value.get(k, 0) * s for k, s in (("days", 86400), ("hours", 3600),
                                                     ("minutes", 60), ("seconds", 1)))
    days, hours, minutes, seconds = (int(p) for p in str(value).split(":"))
    return float(((days * 24 + hours) * 60 + minutes) * 60 + seconds)


def budget(run: Run) -> tuple[str, float] | None:
    """The axis and amount of the run's budget: teacher passes when it had a pass budget, else
    its wall-clock budget (``trainer.max_time``), else the time it trained for."""
    passes = ((run.config.get("callbacks") or {}).get("teacher_pass_budget") or {}).get("max_passes")
    if passes:
        return PASS_AXIS, float(passes)
    seconds = max_time_s((run.config.get("trainer") or {}).get("max_time"))
    if seconds:
        return TIME_AXIS, seconds
    times = [p[TIME_AXIS] for p in run.curve if TIME_AXIS in p]
    return (TIME_AXIS, max(times)) if times else None


def accuracy_by(curve: list, axis: str, amount: float) -> float | None:
    """Test accuracy (%) of the last evaluation made by ``amount`` on ``axis``; None if none was."""
    reached = [p for p in curve if axis in p and "val/acc" in p and p[axis] <= amount]
    return 100 * max(reached, key=lambda p: p[axis])["val/acc"] if reached else None


def first_reaching(curve: list, axis: str, acc_pct: float) -> float | None:
    """Where on ``axis`` the first evaluation at or above ``acc_pct`` (%) was made; None if none was."""
    hits = [p[axis] for p in curve if axis in p and "val/acc" in p and 100 * p["val/acc"] >= acc_pct]
    return min(hits) if hits else None


# --- rows ----------------------------------------------------------------------------------------
def _network_name(spec: dict | None) -> str | None:
    """A network as the table names it: the weights file it was loaded from (``teacher.ckpt``
    wins over the zoo entry a method's default names), else its zoo entry or arch."""
    spec = spec or {}
    return Path(spec["ckpt"]).name if spec.get("ckpt") else spec.get("zoo") or network_name(spec)


def transfer_data(config: dict) -> str:
    """What the student learns from: images synthesised from the teacher (data-free), a proxy
    dataset the teacher labels (not data-free, named), or the real training data."""
    method = config.get("method") or {}
    proxy = config.get("proxy")
    if proxy:
        classes = proxy.get("classes")
        return f"proxy {proxy.get('name')}" + (f" classes {','.join(map(str, classes))}" if classes else "")
    return "synthetic" if method.get("synthesis") else "real data"


def shown_path(path: Path, root: Path | None) -> str:
    """A run dir as a table shows it: relative to the report's folder when inside it, else to the
    directory the report was made from (no machine's home in a committed table), else as it is."""
    for base in (root, Path.cwd()):
        if base and path.is_relative_to(base):
            return str(path.relative_to(base))
    return str(path)


def run_row(run: Run, root: Path | None = None) -> dict:
    """One run's figures in the table's units."""
    out = {"method": run.method, "transfer": transfer_data(run.config), "data": (run.config.get("data") or {}).get("name"),
           "teacher": _network_name(run.config.get("teacher")),
           "student": _network_name(run.config.get("student")), "seed": run.config.get("seed"),
           "status": run.status,
           "run": shown_path(run.dir, root)}
    method = run.config.get("method") or {}
    if method.get("trains") == "teacher":  # the teacher group names the network this run trains
        out["student"] = out["teacher"]
    if method.get("uses_teacher") is False:
        out["teacher"] = None
    for key, (name, scale) in METRICS.items():
        if isinstance(run.metrics.get(key), (int, float)):
            out[name] = run.metrics[key] * scale
    spent = budget(run)
    if spent:
        axis, amount = spent
        out["acc_q1"] = accuracy_by(run.curve, axis, amount / 4)
        out["acc_q2"] = accuracy_by(run.curve, axis, amount / 2)
    return out


def group_runs(runs: list[Run]) -> list[list[Run]]:
    """Runs of one method, data, teacher, student and setting (seeds apart), in first-seen order."""
    groups: dict[tuple, list[Run]] = {}
    for run in runs:
        r = run_row(run)
        groups.setdefault((r["method"], r["data"], r["teacher"], r["student"], run.setting), []).append(run)
    return list(groups.values())


def differs(groups: list[list[Run]]) -> list[str]:
    """For each group, the overrides that set it apart from the other rows of its method."""
    by_method: dict[str, list[set]] = {}
    for g in groups:
        by_method.setdefault(g[0].method, []).append(set(g[0].setting))
    out = []
    for g in groups:
        settings = by_method[g[0].method]
        shared = set.intersection(*settings)
        out.append(" ".join(o for o in g[0].setting if o not in shared) if len(settings) > 1 else "")
    return out


def mean_std(values: list[float]) -> tuple[float | None, float | None]:
    """Mean and sample standard deviation (n - 1); no std from a single value."""
    values = [v for v in values if v is not None]
    if not values:
        return None, None
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else None


def status_summary(runs: list[Run]) -> str:
    counts: dict[str, int] = {}
    for run in runs:
        counts[run.status] = counts.get(run.status, 0) + 1
    return ", ".join(f"{n} {status}" for status, n in counts.items())


def one_run_per_seed(rows: list[dict], runs: list[Run]) -> list[dict]:
    """Of finished runs that share a seed (the same run made again in another dir), the one that
    ended last: a repeated seed is not an independent sample."""
    latest: dict = {}
    for row, run in zip(rows, runs):
        ended = (run.dir / "metrics.json").stat().st_mtime
        if row["seed"] not in latest or ended >= latest[row["seed"]][0]:
            latest[row["seed"]] = (ended, row)
    return [row for _, row in latest.values()]


def aggregate(group: list[Run], differ: str) -> dict:
    """One table row: mean and std over the finished runs of the group, one a seed; others only counted."""
    rows = [run_row(r) for r in group]
    done = [(row, run) for row, run in zip(rows, group) if run.finished]
    finished = one_run_per_seed([row for row, _ in done], [run for _, run in done])
    out = {k: rows[0][k] for k, _ in LABELS if k != "differs"}
    out["differs"] = differ
    out["seeds"] = ",".join(str(r["seed"]) for r in finished)
    out["n"] = len(finished)
    out["status"] = status_summary(group)
    if len(finished) < len(done):
        out["status"] += f" ({len(done) - len(finished)} earlier of a repeated seed left out)"
    for key, _, _ in FIGURES:
        out[f"{key}_mean"], out[f"{key}_std"] = mean_std([r.get(key) for r in finished])
    return out


def add_share(rows: list[dict], method: str) -> None:
    """Each row's final accuracy as a % of the final accuracy of ``method``'s row (the reference a
    reader compares with, such as KD with real data): ``share_mean`` and ``share_std``."""
    refs = [r for r in rows if r["method"] == method]
    if len(refs) != 1 or refs[0].get("acc_mean") is None:
        found = f"{len(refs)} rows of it" if len(refs) != 1 else "its row has no final accuracy"
        raise ValueError(f"relative to {method}: needs one row of it with a final accuracy, {found} "
                         f"(methods here: {', '.join(sorted({r['method'] for r in rows}))})")
    reference = refs[0]["acc_mean"]
    for row in rows:
        mean, std = row.get("acc_mean"), row.get("acc_std")
        row["share_mean"] = None if mean is None else 100 * mean / reference
        row["share_std"] = None if std is None else 100 * std / reference


def with_share(columns: list[tuple], head: dict) -> list[tuple]:
    """``columns`` with the share-of-reference column after the best accuracy, when the report has one."""
    reference = head.get("relative_to")
    if not reference:
        return columns
    at = [k for k, _ in columns].index("acc_best") + 1
    return [*columns[:at], ("share", f"% of {reference} acc"), *columns[at:]]


# --- the table ---------------------------------------------------------------------------------
def _cell(key: str, value) -> str:
    if value is None or value == "":
        return "-"
    if key in DECIMALS:
        return f"{value:.{DECIMALS[key]}f}"
    return str(value).replace("|", "\\|")


def _figure(row: dict, key: str) -> str:
    mean, std = row.get(f"{key}_mean"), row.get(f"{key}_std")
    if mean is None:
        return "-"
    return _cell(key, mean) + (f" ± {std:.{DECIMALS[key]}f}" if std is not None else "")


def row_cells(row: dict, columns=ROW_COLUMNS) -> list[str]:
    return [_figure(row, k) if k in DECIMALS else _cell(k, row.get(k)) for k, _ in columns]


def markdown_table(columns, cells: list[list[str]]) -> str:
    text_keys = {"method", "transfer", "row", "target", "reached", "data", "teacher", "student", "differs", "seeds", "seed", "status", "run"}
    lines = ["| " + " | ".join(h for _, h in columns) + " |",
             "|" + "|".join("---" if k in text_keys else "---:" for k, _ in columns) + "|"]
    return "\n".join(lines + ["| " + " | ".join(c) + " |" for c in cells]) + "\n"


def utc_minute() -> str:
    """Now, as tables print a date (``2026-12-01 07:51 UTC``): a run's end, a report's making."""
    return datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")


def header(runs: list[Run], dirs, missing=()) -> dict:
    """Machine, commit and command: what a reader needs to compare the table with another."""
    def distinct(key):
        return sorted({str(r.metrics[key]) for r in runs if r.metrics.get(key) is not None})

    def machine(m):
        # two CPUs of one name may differ in bf16 kernels, and bf16 runs 3-11 times slower without them
        bf16 = {True: ", bf16 kernels", False: ", no bf16 kernels"}.get(m.get("machine/cpu_bf16"), "")
        return (f"{m['machine/cpu']} ({m.get('machine/cpus')} CPUs, {m.get('machine/threads')} threads{bf16}), "
                f"GPU: {m.get('machine/gpu') or 'none'}")

    machines = sorted({machine(r.metrics) for r in runs if r.metrics.get("machine/cpu")})
    commands = sorted({(Path(d) / "command.txt").read_text().strip() for d in dirs
                       if (Path(d) / "command.txt").is_file()})
    ended = distinct("run/ended")  # the format sorts by time
    return {"date": utc_minute(),
            "ended": [ended[0], ended[-1]] if ended else None,
            "machine": machines or ["not recorded"], "commit": distinct("run/commit") or ["not recorded"],
            "command": commands, "runs": len(runs), "finished": sum(r.finished for r in runs),
            "no_metrics": list(missing)}


def ended_text(head: dict, prefix: str) -> str:
    """When the runs ended ("A" or "A to B"), after ``prefix``; "" for runs that did not record it."""
    first, last = head.get("ended") or (None, None)
    if first is None:
        return ""
    return prefix + (first if first == last else f"{first} to {last}")


def header_lines(head: dict) -> list[str]:
    lines = [f"- machine: {'; '.join(head['machine'])}", f"- commit: {', '.join(head['commit'])}",
             (f"- runs: {head['runs']} ({head['finished']} finished){ended_text(head, ', ended ')}, "
              f"report made {head['date']}")]
    lines += [f"- command: `{c}`" for c in head["command"]]
    return lines + [f"- failed without metrics: {m}" for m in head.get("no_metrics", [])]


NOTE = ("Mean ± sample std over the seeds of the finished runs (not finished runs are counted in "
        "`status` and left out of the figures). Accuracies on the real test set: final is the last "
        "evaluation, best the best one (what reference code reports); at 1/4 and 1/2 budget is the "
        "last evaluation made by then (of the wall-clock budget, or of the teacher-pass budget when "
        "the run had one). Teacher passes count the teacher's forward (and backward, where "
        "synthesis differentiates through it) calls on a batch; images/s are images made per second of "
        "synthesis. `% of M acc` (with `--relative-to M`) is the final accuracy as a share of method M's row. Peak MB is the run's peak host "
        "memory (its run's peak resident memory). `differs` names the overrides that set a row apart "
        "from the other rows of its method.")


def write_tables(rows: list[dict], run_rows: list[dict], head: dict, out_dir: Path, stem: str,
                 title: str, reach: list[dict] | None = None) -> str:
    """``<stem>.md``, ``<stem>.json`` and ``<stem>.csv``; returns the markdown table of rows."""
    columns = with_share(ROW_COLUMNS, head)
    table = markdown_table(columns, [row_cells(r, columns) for r in rows])
    runs_table = markdown_table(RUN_COLUMNS, [[_cell(k, r.get(k)) for k, _ in RUN_COLUMNS] for r in run_rows])
    reach_part = ["## Time to reach another row's accuracy", "", reach_table(reach), REACH_NOTE, ""] if reach else []
    text = "\n".join([f"# {title}", "", *header_lines(head), "", table, NOTE, "", *reach_part,
                      "## Runs", "", runs_table])
    (out_dir / f"{stem}.md").write_text(text)
    saved = {"header": head, "rows": rows, **({"reach": reach} if reach else {}), "runs": run_rows}
    (out_dir / f"{stem}.json").write_text(json.dumps(saved, indent=2) + "\n")
    figures = [k for k, _, _ in FIGURES] + (["share"] if head.get("relative_to") else [])
    fields = [k for k, _ in LABELS] + ["seeds", "n", "status"] + [f"{k}_{s}" for k in figures for s in ("mean", "std")]
    with open(out_dir / f"{stem}.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=fields, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
    return table


# --- how soon one row reaches another's accuracy --------------------------------------------------
REACH_COLUMNS = [("row", "row"), ("target", "reaches the final acc of"), ("target_acc", "that acc %"),
                 ("reached", "seeds reaching it"), ("time_s", "at s"), ("passes", "at teacher passes")]


def reach_rows(groups: list[list[Run]], rows: list[dict], labels: list[str], methods) -> list[dict]:
    """For each ordered pair of rows of ``methods``: how many of the first row's finished seeds
    reach the second row's mean final accuracy, and at what wall time and teacher-pass count
    (mean ± std over the seeds that reach it)."""
    chosen = [(g, r, lab) for g, r, lab in zip(groups, rows, labels) if r["method"] in methods]
    out = []
    for group, _, label in chosen:
        finished = [run for run in group if run.finished]
        for _, target, target_label in chosen:
            if target_label == label or target.get("acc_mean") is None or not finished:
                continue
            times = [first_reaching(run.curve, TIME_AXIS, target["acc_mean"]) for run in finished]
            passes = [first_reaching(run.curve, PASS_AXIS, target["acc_mean"]) for run in finished]
            out.append({"row": label, "target": target_label, "target_acc": target["acc_mean"],
                        "reached": f"{sum(t is not None for t in times)} of {len(times)}",
                        "time_s": mean_std(times), "passes": mean_std(passes)})
    return out


def reach_table(reach: list[dict]) -> str:
    def figure(pair, decimals):
        mean, std = pair
        return "-" if mean is None else f"{mean:.{decimals}f}" + (f" ± {std:.{decimals}f}" if std is not None else "")

    return markdown_table(REACH_COLUMNS, [[r["row"], r["target"], f"{r['target_acc']:.2f}", r["reached"],
                                           figure(r["time_s"], 0), figure(r["passes"], 0)] for r in reach])


REACH_NOTE = ("Wall time and teacher passes of a run's first evaluation at or above the other row's "
              "mean final accuracy, mean ± std over the seeds that reach it (`-`: none does).")


# --- the README's headline ---------------------------------------------------------------------
HEADLINE = [("method", "method"), ("transfer", "student learns from"), ("teacher", "teacher"),
            ("acc", "final acc %"), ("acc_best", "best acc %"), ("acc_q2", "acc % at 1/2 budget"),
            ("teacher_passes", "teacher passes"), ("total_s", "total s")]
# what a headline may show instead: every label and figure of the full table, and the share of a reference row
HEADLINE_KEYS = [k for k, _ in LABELS] + ["seeds"] + [k for k, _, _ in FIGURES] + ["share"]


def headline_columns(keys: list[str] | None, head: dict) -> list[tuple]:
    """The headline's (key, header) pairs: ``keys`` in that order, or the default columns (with
    the share of the reference row when the report has one)."""
    if not keys:
        return with_share(HEADLINE, head)
    unknown = [k for k in keys if k not in HEADLINE_KEYS]
    if unknown:
        raise ValueError(f"unknown column {', '.join(unknown)}; columns: {' '.join(HEADLINE_KEYS)}")
    if "share" in keys and not head.get("relative_to"):
        raise ValueError("the share column needs --relative-to METHOD")
    headers = dict(with_share(ROW_COLUMNS, head))
    return [(k, headers[k]) for k in keys]


def headline(rows: list[dict], head: dict, report_link: str, columns: list[tuple] | None = None) -> str:
    """The short table a product page shows: rows by final accuracy, best first, under the
    date, machine, commit and command of the benchmark, with a link to the full report."""
    columns = columns or headline_columns(None, head)
    def rank(row):
        return -row["acc_mean"] if row.get("acc_mean") is not None else math.inf

    def labelled(row):
        return {**row, "method": row["method"] + (f" ({row['differs']})" if row.get("differs") else "")}

    cells = [row_cells(labelled(r), columns) for r in sorted(rows, key=rank)]
    seeds = sorted({s for r in rows for s in r["seeds"].split(",") if s}, key=int)
    measured = (f"Measured {ended_text(head, '') or head['date']} on {'; '.join(head['machine'])}, commit {', '.join(head['commit'])}; "
                f"mean ± std over seeds {', '.join(seeds)} ({head['finished']} of {head['runs']} runs finished):")
    lines = [measured, ""]
    lines += [f"```bash\n{c}\n```\n" for c in head["command"]]
    return "\n".join(lines) + "\n" + markdown_table(columns, cells) + \
        f"\nEvery column, the curves and the samples: [{report_link}]({report_link}).\n"


def replace_block(text: str, marker: str, block: str) -> str:
    """``text`` with what lies between ``<!-- dfkd-report NAME -->`` and ``<!-- /dfkd-report NAME -->``
    replaced by ``block``."""
    start, end = f"<!-- dfkd-report {marker} -->", f"<!-- /dfkd-report {marker} -->"
    if text.count(start) != 1 or text.count(end) != 1 or text.index(start) > text.index(end):
        raise ValueError(f"needs one '{start}' line and one '{end}' line after it, around the table to replace")
    before, rest = text.split(start)
    return before + start + "\n" + block + end + rest.split(end)[1]


# --- figures (matplotlib) -----------------------------------------------------------------------
def seed_band(runs: list[Run], axis: str) -> tuple[list, list, list] | None:
    """Mean and std over seeds of the accuracy reached by each evaluation point on ``axis``,
    where every run has been evaluated (from the latest first evaluation to the earliest last;
    where those do not overlap, as with one evaluation per seed, the latest first evaluation)."""
    curves = [[(p[axis], 100 * p["val/acc"]) for p in r.curve if axis in p and "val/acc" in p] for r in runs]
    curves = [sorted(c) for c in curves if c]
    if not curves:
        return None
    low = max(c[0][0] for c in curves)
    high = max(low, min(c[-1][0] for c in curves))
    grid = sorted({x for c in curves for x, _ in c if low <= x <= high})
    means, stds = [], []
    for x in grid:
        mean, std = mean_std([max((p for p in c if p[0] <= x), key=lambda p: p[0])[1] for c in curves])
        means.append(mean)
        stds.append(std or 0.0)
    return grid, means, stds


def plot_bands(groups: list[list[Run]], labels: list[str], axis: str, xlabel: str, path: Path) -> bool:
    """Accuracy against ``axis``: one line per row (mean over its finished seeds), a band of
    +- one std; the full row names are in the tables, long ones are cut in the legend."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    bands = [(i, label, seed_band([r for r in g if r.curve and r.finished], axis))
             for i, (g, label) in enumerate(zip(groups, labels))]
    bands = [(i, label, band) for i, label, band in bands if band]
    if not bands:
        return False
    fig, ax = plt.subplots(figsize=(9.6, 5.6), dpi=100)
    for i, label, (xs, means, stds) in bands:
        color = f"C{i % 10}"  # by row, so a row has one colour in every figure
        short = label if len(label) <= 40 else label[:39] + "…"
        ax.plot(xs, means, marker="o", markersize=3, color=color, label=short,
                linestyle="-" if i < 10 else "--")
        ax.fill_between(xs, [m - s for m, s in zip(means, stds)], [m + s for m, s in zip(means, stds)],
                        color=color, alpha=0.2, linewidth=0)
    ax.set_xlabel(xlabel)
    ax.set_ylabel("student test accuracy (%)")
    ax.set_ylim(0, 100)
    ax.grid(alpha=0.3)
    ax.legend(loc="center left", bbox_to_anchor=(1.01, 0.5), fontsize="small")
    ax.set_title(f"student test accuracy vs {xlabel} (mean ± std over seeds)")
    fig.subplots_adjust(left=0.08, right=0.66, top=0.92, bottom=0.1)  # room for the legend
    fig.savefig(path)
    plt.close(fig)
    return True


def _font(size: int):
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1 has one fixed-size default font
        return ImageFont.load_default()


def sample_page(groups: list[list[Run]], labels: list[str], path: Path, tile: int = 256) -> bool:
    """Each row's latest sample grid (its first run with one), side by side; False if none has."""
    tiles = [(label, next((r.samples for r in g if r.samples), None)) for g, label in zip(groups, labels)]
    tiles = [(label, file) for label, file in tiles if file]
    if not tiles:
        return False
    cols, label_h, pad = min(4, len(tiles)), 24, 10
    rows = -(-len(tiles) // cols)
    page = Image.new("RGB", (cols * (tile + pad) + pad, rows * (tile + label_h + pad) + pad), "white")
    draw, font = ImageDraw.Draw(page), _font(16)
    for i, (label, file) in enumerate(tiles):
        x, y = pad + (i % cols) * (tile + pad), pad + (i // cols) * (tile + label_h + pad)
        with Image.open(file) as grid:
            grid = grid.convert("RGB")
            grid.thumbnail((tile, tile))
            page.paste(grid, (x + (tile - grid.width) // 2, y + label_h))
        draw.text((x + tile / 2, y + label_h / 2), label, fill="black", font=font, anchor="mm")
    page.save(path)
    return True


# --- HTML --------------------------------------------------------------------------------------
def _html_table(table_id: str, columns, cells: list[list[str]]) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for _, h in columns)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in row) + "</tr>\n" for row in cells)
    return f'<table id="{table_id}"><thead><tr>{head}</tr></thead><tbody>\n{body}</tbody></table>\n'


def markdown_code(text: str) -> str:
    """A header line as HTML: escaped, its Markdown code spans (a command) as ``<code>``."""
    return re.sub(r"`([^`]+)`", r"<code>\1</code>", html.escape(text))


def write_html(rows: list[dict], run_rows: list[dict], head: dict, out_dir: Path, title: str,
               images: dict[str, str]):
    """A static page: header, the table, the figures by relative path (opens from disk), the runs."""
    facts = "".join(f"<li>{markdown_code(line[2:])}</li>" for line in header_lines(head))
    figures = "".join(f'<h2>{html.escape(caption)}</h2>\n<img src="{html.escape(name)}" alt="{html.escape(caption)}">\n'
                      for caption, name in images.items()) or "<p>No accuracy curves or sample grids found.</p>"
    runs = [[_cell(k, r.get(k)) for k, _ in RUN_COLUMNS] for r in run_rows]
    columns = with_share(ROW_COLUMNS, head)
    page = f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title>
<style>body{{font-family:sans-serif;margin:2em}} table{{border-collapse:collapse;margin-bottom:1em}}
td,th{{border:1px solid #999;padding:4px 8px;text-align:right}} td:nth-child(-n+5){{text-align:left}}
img{{max-width:100%;border:1px solid #ccc}}</style></head>
<body><h1>{html.escape(title)}</h1>
<ul>{facts}</ul>
{_html_table("results", columns, [row_cells(r, columns) for r in rows])}
<p>{markdown_code(NOTE)}</p>
{figures}<h2>Runs</h2>
{_html_table("runs", RUN_COLUMNS, runs)}</body></html>
"""
    (out_dir / "report.html").write_text(page)


def write_report(paths, out_dir: Path, stem: str = "report", title: str = "dfkd-lab report", missing=(),
                 reach=(), relative_to: str | None = None):
    """Tables (``<stem>.md/.json/.csv``), figures and ``report.html`` for the runs under ``paths``;
    ``missing`` names runs that failed before writing metrics (listed in the header); ``reach``
    names methods whose rows are compared by how soon each reaches the others' accuracy;
    ``relative_to`` names the method whose final accuracy every row is also shown as a share of.
    Returns the aggregated rows, their markdown table and the header."""
    out_dir = Path(out_dir)
    runs = [load_run(p) for p in find_runs(paths)]
    groups = group_runs(runs)
    differ = differs(groups)
    rows = [aggregate(g, d) for g, d in zip(groups, differ)]
    unknown = sorted(set(reach) - {r["method"] for r in rows})
    if unknown:
        raise ValueError(f"no runs of {', '.join(unknown)} to compare (methods here: "
                         f"{', '.join(sorted({r['method'] for r in rows}))})")
    if relative_to:
        add_share(rows, relative_to)
    labels = [f"{g[0].method} {d}".strip() for g, d in zip(groups, differ)]
    run_rows = [{**run_row(r, out_dir.resolve()), "differs": d} for g, d in zip(groups, differ) for r in g]
    head = {**header(runs, paths, missing), **({"relative_to": relative_to} if relative_to else {})}
    out_dir.mkdir(parents=True, exist_ok=True)  # only once every request could be met
    table = write_tables(rows, run_rows, head, out_dir, stem, title, reach_rows(groups, rows, labels, reach))
    images = {}
    if plot_bands(groups, labels, TIME_AXIS, "wall time (s)", out_dir / "accuracy_vs_time.png"):
        images["Student accuracy vs wall time"] = "accuracy_vs_time.png"
    if plot_bands(groups, labels, PASS_AXIS, "teacher passes", out_dir / "accuracy_vs_teacher_passes.png"):
        images["Student accuracy vs teacher passes"] = "accuracy_vs_teacher_passes.png"
    if sample_page(groups, labels, out_dir / "samples.png"):
        images["Synthetic samples (latest grid per row)"] = "samples.png"
    write_html(rows, run_rows, head, out_dir, title, images)
    return rows, table, head


def main(argv=None):
    parser = argparse.ArgumentParser(prog="dfkd-report", description=__doc__.splitlines()[0])
    parser.add_argument("dirs", nargs="+", type=Path, help="run, multirun or benchmark dirs")
    parser.add_argument("-o", "--out", type=Path, help="where to write the report (default: the first dir)")
    parser.add_argument("--stem", default="report", help="file name of the tables (default: report)")
    parser.add_argument("--title", default="dfkd-lab report")
    parser.add_argument("--reach", nargs="+", default=(), metavar="METHOD",
                        help="also tabulate when each row of these methods reaches the others' final accuracy")
    parser.add_argument("--readme", type=Path, metavar="FILE",
                        help="also write the headline table into FILE, between the lines "
                             "'<!-- dfkd-report STEM -->' and '<!-- /dfkd-report STEM -->'")
    parser.add_argument("--relative-to", metavar="METHOD",
                        help="also show each row's final accuracy as a %% of this method's row (e.g. kd)")
    parser.add_argument("--readme-columns", nargs="+", metavar="KEY",
                        help=f"the headline's columns, in order (default: {' '.join(k for k, _ in HEADLINE)}; "
                             f"any of {' '.join(HEADLINE_KEYS)})")
    args = parser.parse_args(argv)
    if args.readme and not args.readme.is_file():
        parser.error(f"--readme {args.readme}: no such file")
    if args.readme_columns and not args.readme:
        parser.error("--readme-columns needs --readme FILE")
    try:  # the columns are checked before any file is written
        headline_columns(args.readme_columns, {"relative_to": args.relative_to})
    except ValueError as err:
        parser.error(f"--readme-columns: {err}")
    if args.readme:
        try:  # its markers are checked before any file is written
            replace_block(args.readme.read_text(), args.stem, "")
        except ValueError as err:
            parser.error(f"--readme {args.readme}: {err}")
    try:
        runs = find_runs(args.dirs)
    except FileNotFoundError as err:
        parser.error(str(err))
    if not runs:
        parser.error(f"no run (a dir with metrics.json or progress.json) under {', '.join(map(str, args.dirs))}")
    out = args.out or args.dirs[0]
    try:
        rows, table, head = write_report([p.resolve() for p in args.dirs], out.resolve(), args.stem, args.title,
                                         reach=args.reach, relative_to=args.relative_to)
    except ValueError as err:
        parser.error(str(err))
    print(table + f"\nreport: {out / (args.stem + '.md')}, {out / 'report.html'}")
    if args.readme:
        link = os.path.relpath(out.resolve() / f"{args.stem}.md", args.readme.resolve().parent)
        try:
            columns = headline_columns(args.readme_columns, head)
            text = replace_block(args.readme.read_text(), args.stem, headline(rows, head, link, columns))
        except ValueError as err:
            parser.error(f"--readme {args.readme}: {err}")
        args.readme.write_text(text)
        print(f"headline table: {args.readme}")


if __name__ == "__main__":
    main()
