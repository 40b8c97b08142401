"""``dfkd-report DIR...``: runs on disk -> one results table, plots and a static HTML page.

Any folder holding ``metrics.json`` (written when a run ends, with its status) or
``progress.json`` (written during a run: one without metrics.json never ended) is a run
(single runs, multiruns and ``dfkd-bench`` output dirs alike). The table is written as markdown and JSON; the plots are drawn with
PIL (no plotting dependency); ``report.html`` links them by relative path, so the folder
opens in a browser with no server and can be copied anywhere.
"""

import argparse
import html
import json
from dataclasses import dataclass, field
from pathlib import Path

import yaml
from PIL import Image, ImageDraw, ImageFont

# (key in a row, markdown header); rows hold raw numbers, formatting happens on output.
COLUMNS = [
    ("method", "method"),
    ("data", "data"),
    ("teacher", "teacher"),
    ("student", "student"),
    ("teacher_acc", "teacher acc %"),
    ("acc", "student acc % (final)"),
    ("acc_best", "student acc % (best)"),
    ("pct_teacher", "% of teacher"),
    ("synthesis_s", "synthesis s"),
    ("kd_s", "KD s"),
    ("images", "images made"),
    ("images_per_s", "images/s"),
    ("peak_mb", "peak MB"),
    ("total_s", "total s"),
    ("status", "status"),
    ("run", "run dir"),
]

# metrics.json key -> row key, and the factor that turns it into the unit the table shows
METRICS = {
    "teacher/acc": ("teacher_acc", 100),
    "test/acc": ("acc", 100),
    "test/acc_best": ("acc_best", 100),
    "cost/synthesis_s": ("synthesis_s", 1),
    "cost/kd_s": ("kd_s", 1),
    "cost/images": ("images", 1),
    "cost/images_per_s": ("images_per_s", 1),
    "mem/peak_mb": ("peak_mb", 1),
    "time/total_s": ("total_s", 1),
}

DECIMALS = {"teacher_acc": 2, "acc": 2, "acc_best": 2, "pct_teacher": 1, "synthesis_s": 1, "kd_s": 1,
            "images": 0, "images_per_s": 1, "peak_mb": 0, "total_s": 0}

PALETTE = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f",
           "#bcbd22", "#17becf", "#000000", "#aec7e8", "#ffbb78", "#98df8a", "#ff9896", "#c5b0d5"]


# A run with progress but no end record: killed (SIGKILL, out of memory, node lost) or still running.
UNFINISHED = "unfinished (killed, or still running)"


@dataclass
class Run:
    dir: Path
    config: dict
    metrics: dict
    curve: list = field(default_factory=list)
    samples: Path | None = None

    @property
    def method(self) -> str:
        return (self.config.get("method") or {}).get("name") or self.dir.name


def find_runs(paths) -> list[Path]:
    """Every run dir under ``paths`` (a dir with metrics.json or progress.json), in a stable order."""
    found = []
    for path in map(Path, paths):
        if not path.is_dir():
            raise FileNotFoundError(f"{path} is not a directory of runs")
        found += [p.parent for name in ("metrics.json", "progress.json") for p in path.rglob(name)]
    return sorted(set(found))


def load_run(path: Path) -> Run:
    config_file = path / ".hydra" / "config.yaml"
    config = yaml.safe_load(config_file.read_text()) if config_file.is_file() else {}
    ended = path / "metrics.json"
    metrics = json.loads(ended.read_text()) if ended.is_file() else \
        {**json.loads((path / "progress.json").read_text()), "status": UNFINISHED}
    curve_file = path / "curve.jsonl"
    curve = [json.loads(line) for line in curve_file.read_text().splitlines() if line.strip()] \
        if curve_file.is_file() else []
    samples = path / "samples" / "latest.png"
    return Run(path, config or {}, metrics, curve, samples if samples.is_file() else None)


def _network_name(spec: dict | None) -> str | None:
    spec = spec or {}
    return spec.get("zoo") or spec.get("arch")


def row(run: Run, root: Path | None = None) -> dict:
    out = {"method": run.method, "data": (run.config.get("data") or {}).get("name"),
           "teacher": _network_name(run.config.get("teacher")),
           "student": _network_name(run.config.get("student")),
           "status": run.metrics.get("status", "finished"),
           "run": str(run.dir.relative_to(root)) if root and run.dir.is_relative_to(root) else str(run.dir)}
    if (run.config.get("method") or {}).get("uses_teacher") is False:
        out["teacher"] = None
    for key, (name, scale) in METRICS.items():
        if key in run.metrics:
            out[name] = run.metrics[key] * scale
    if out.get("acc") is not None and out.get("teacher_acc"):
        out["pct_teacher"] = 100 * out["acc"] / out["teacher_acc"]
    return out


def _cell(key: str, value) -> str:
    if value is None:
        return "-"
    if key in DECIMALS:
        return f"{value:.{DECIMALS[key]}f}"
    return str(value).replace("|", "\\|")


def markdown(rows: list[dict]) -> str:
    lines = ["| " + " | ".join(h for _, h in COLUMNS) + " |",
             "|" + "|".join("---" if k in {"method", "data", "teacher", "student", "status", "run"} else "---:"
                            for k, _ in COLUMNS) + "|"]
    lines += ["| " + " | ".join(_cell(k, r.get(k)) for k, _ in COLUMNS) + " |" for r in rows]
    return "\n".join(lines) + "\n"


def write_table(rows: list[dict], out_dir: Path, stem: str) -> str:
    """``<stem>.md`` and ``<stem>.json``; returns the markdown."""
    table = markdown(rows)
    note = ("\nAccuracies on the real test set. final: last evaluation; best: best evaluation "
            "(what reference code reports). Synthesis and KD seconds, images made and images/s "
            "are data-free costs; peak MB is the run's peak host memory (max RSS).\n")
    (out_dir / f"{stem}.md").write_text(table + note)
    (out_dir / f"{stem}.json").write_text(json.dumps({"columns": [k for k, _ in COLUMNS], "rows": rows},
                                                     indent=2) + "\n")
    return table


# --- plots (PIL) -------------------------------------------------------------------------
def _font(size: int):
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1 has one fixed-size default font
        return ImageFont.load_default()


def _labels(runs: list[Run]) -> list[str]:
    """Method names, numbered where one method appears more than once."""
    names = [r.method for r in runs]
    return [f"{n} #{names[:i].count(n) + 1}" if names.count(n) > 1 else n for i, n in enumerate(names)]


def _ticks(high: float, count: int = 5) -> list[float]:
    """Round tick values from 0 to at least ``high``."""
    raw = max(high, 1e-9) / count
    step = min(m * 10 ** e for e in range(-3, 8) for m in (1, 2, 5) if m * 10 ** e >= raw)
    return [i * step for i in range(int(high / step) + 2) if i * step <= high + step]


def plot_curves(runs: list[Run], path: Path) -> bool:
    """Student test accuracy against wall time, one line per run; False when no run has a curve."""
    series = [(label, [(p["time_s"], 100 * p["val/acc"]) for p in r.curve if "val/acc" in p and "time_s" in p])
              for label, r in zip(_labels(runs), runs)]
    series = [(label, pts) for label, pts in series if pts]
    if not series:
        return False
    width, height, left, right, top, bottom = 960, 560, 70, 210, 40, 60
    img = Image.new("RGB", (width, height), "white")
    draw, font = ImageDraw.Draw(img), _font(14)
    xticks = _ticks(max(t for _, pts in series for t, _ in pts))
    yticks = list(range(0, 101, 20))
    x_max, plot_w, plot_h = xticks[-1], width - left - right, height - top - bottom

    def xy(t, acc):
        return left + plot_w * t / x_max, top + plot_h * (1 - acc / 100)

    for t in xticks:
        x, _ = xy(t, 0)
        draw.line([(x, top), (x, top + plot_h)], fill="#e5e5e5")
        draw.text((x, top + plot_h + 6), f"{t:g}", fill="black", font=font, anchor="mt")
    for acc in yticks:
        _, y = xy(0, acc)
        draw.line([(left, y), (left + plot_w, y)], fill="#e5e5e5")
        draw.text((left - 6, y), f"{acc}", fill="black", font=font, anchor="rm")
    draw.rectangle([left, top, left + plot_w, top + plot_h], outline="black")
    draw.text((left + plot_w / 2, height - 18), "wall time (s)", fill="black", font=font, anchor="mm")
    draw.text((left, 14), "student test accuracy (%) vs wall time", fill="black", font=font, anchor="lm")
    for i, (label, pts) in enumerate(series):
        color = PALETTE[i % len(PALETTE)]
        xys = [xy(t, acc) for t, acc in sorted(pts)]
        if len(xys) > 1:
            draw.line(xys, fill=color, width=2)
        for x, y in xys:
            draw.ellipse([x - 3, y - 3, x + 3, y + 3], fill=color)
        ly = top + 10 + 22 * i
        draw.line([(width - right + 15, ly), (width - right + 40, ly)], fill=color, width=3)
        draw.text((width - right + 48, ly), label, fill="black", font=font, anchor="lm")
    img.save(path)
    return True


def sample_page(runs: list[Run], path: Path, tile: int = 256) -> bool:
    """Each run's latest sample grid, side by side with its label; False when none has one."""
    tiles = [(label, r.samples) for label, r in zip(_labels(runs), runs) if r.samples]
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


# --- HTML --------------------------------------------------------------------------------
def write_html(rows: list[dict], out_dir: Path, title: str, images: dict[str, str]):
    """A static page: the table and the plots by relative path (opens from disk)."""
    head = "".join(f"<th>{html.escape(h)}</th>" for _, h in COLUMNS)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(_cell(k, r.get(k)))}</td>" for k, _ in COLUMNS)
                   + "</tr>\n" for r in rows)
    figures = "".join(f'<h2>{html.escape(caption)}</h2>\n<img src="{html.escape(name)}" alt="{html.escape(caption)}">\n'
                      for caption, name in images.items()) or "<p>No accuracy curves or sample grids found.</p>"
    page = f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title>
<style>body{{font-family:sans-serif;margin:2em}} table{{border-collapse:collapse}}
td,th{{border:1px solid #999;padding:4px 8px;text-align:right}} td:nth-child(-n+4),td:nth-last-child(-n+2){{text-align:left}}
img{{max-width:100%;border:1px solid #ccc}}</style></head>
<body><h1>{html.escape(title)}</h1>
<table id="results"><thead><tr>{head}</tr></thead><tbody>
{body}</tbody></table>
<p>Accuracies on the real test set (final: last evaluation; best: best evaluation). Costs are data-free synthesis and KD seconds.</p>
{figures}</body></html>
"""
    (out_dir / "report.html").write_text(page)


def write_report(paths, out_dir: Path, stem: str = "report", extra_rows=(), title: str = "dfkd-lab report"):
    """Table (``<stem>.md/.json``), plots and ``report.html`` for the runs under ``paths``."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    runs = [load_run(p) for p in find_runs(paths)]
    rows = [row(r, out_dir.resolve()) for r in runs] + list(extra_rows)
    table = write_table(rows, out_dir, stem)
    images = {}
    if plot_curves(runs, out_dir / "accuracy_vs_time.png"):
        images["Student accuracy vs wall time"] = "accuracy_vs_time.png"
    if sample_page(runs, out_dir / "samples.png"):
        images["Synthetic samples (latest grid per run)"] = "samples.png"
    write_html(rows, out_dir, title, images)
    return rows, table


def main(argv=None):
    parser = argparse.ArgumentParser(prog="dfkd-report", description=__doc__.splitlines()[0])
    parser.add_argument("dirs", nargs="+", type=Path, help="run, multirun or benchmark dirs")
    parser.add_argument("-o", "--out", type=Path, help="where to write the report (default: the first dir)")
    args = parser.parse_args(argv)
    try:
        runs = find_runs(args.dirs)
    except FileNotFoundError as err:
        parser.error(str(err))
    if not runs:
        parser.error(f"no run (a dir with metrics.json or progress.json) under {', '.join(map(str, args.dirs))}")
    out = args.out or args.dirs[0]
    _, table = write_report([p.resolve() for p in args.dirs], out.resolve())
    print(table + f"\nreport: {out / 'report.html'}")


if __name__ == "__main__":
    main()
