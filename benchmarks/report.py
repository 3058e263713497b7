"""The results as tables: one description, rendered as text (terminal) and as Markdown."""


def fmt(value, unit="", digits=2):
    if value is None:
        return "–"
    return f"{value:.{digits}f}{' ' + unit if unit else ''}"


def stat(summary, key, digits=2):
    return fmt(summary.get(key), summary.get("unit", ""), digits) if summary else "–"


def tables(results):
    """[(title, note, header, rows)] for every section present in `results`."""
    out = []
    single = results.get("single_spawn")
    if single:
        rows = []
        for label, alt in single["alternatives"].items():
            total = alt["total"]
            rows.append([label, str(total.get("runs", 0)), stat(total, "median"), stat(total, "p95"),
                         stat(total, "min"), stat(total, "max"),
                         stat(alt["container_started"], "median"), stat(alt["server_up"], "median"),
                         stat(alt["route_seen"], "median"), stat(alt["after_server_up"], "median"),
                         str(alt["failures"])])
        ratios = ", ".join(f"{k} {fmt(v)}" for k, v in single["ratios"].items())
        paired = ", ".join(f"{k} {fmt(v)}" for k, v in single["paired_ratios"].items())
        out.append(("Single spawn: request → HTTP 200 from /user/<name>/api/status",
                    f"ratios of medians: {ratios}; median of per-round ratios: {paired}",
                    ["alternative", "runs", "median", "p95", "min", "max", "container started",
                     "server up", "route seen", "after server up", "failures"], rows))
    burst = results.get("burst")
    if burst:
        rows = []
        for label, alt in burst["alternatives"].items():
            rows.append([label, str(alt["all_ready"].get("runs", 0)), stat(alt["all_ready"], "median"),
                         stat(alt["per_user"], "p50"), stat(alt["per_user"], "p95"),
                         stat(alt["per_user"], "max"), f"{alt['failures']}/{alt['attempts']}"])
        ratios = ", ".join(f"{k} {fmt(v)}" for k, v in burst["ratios"].items())
        out.append((f"Burst: {burst['users']} users start at once",
                    f"ratios of the all-ready medians: {ratios}",
                    ["alternative", "bursts", "all ready (median)", "per-user p50", "per-user p95",
                     "per-user max", "failures"], rows))
    load = results.get("api_load")
    if load:
        rows = []
        for label, alt in load["alternatives"].items():
            for phase in ("idle", "during_burst"):
                lat = alt[phase]["latency"]
                rows.append([label, phase.replace("_", " "), str(lat.get("runs", 0)),
                             stat(lat, "p50", 1), stat(lat, "p99", 1), fmt(alt[phase]["per_second"], "/s", 1),
                             str(alt[phase]["errors"])])
        ratios = ", ".join(f"{k} {fmt(v)}" for k, v in load["ratios"].items())
        out.append((f"Hub API under load: {load['endpoint']}, {load['concurrency']} concurrent clients",
                    f"during a burst of {load['burst_users']} spawns; ratios: {ratios}",
                    ["hub", "phase", "requests", "p50", "p99", "throughput", "errors"], rows))
    imports = results.get("startup_imports")
    if imports:
        rows = [[name, fmt(value, "s")] for name, value in imports["cumulative_import"].items()]
        out.append(("User server start-up: Python imports in the user image (one run)", imports["what"],
                    ["module", "cumulative import time"], rows))
    footprint = results.get("footprint")
    if footprint:
        rows = []
        for label, alt in footprint["alternatives"].items():
            rows.append([label, fmt(alt.get("hub"), "MiB", 1), fmt(alt.get("proxy"), "MiB", 1),
                         fmt(alt.get("hub_with_burst_running"), "MiB", 1),
                         fmt(alt.get("user_server_idle"), "MiB", 1)])
        out.append(("Footprint: memory in use (usage minus page cache), one sample each",
                    footprint["note"],
                    ["alternative", "hub (1 server)", "proxy", f"hub ({footprint['burst_users']} servers)",
                     "idle user server"], rows))
    builds = results.get("image_build")
    if builds:
        if builds.get("skipped"):
            out.append(("Course image build", builds["skipped"], ["result"], [["skipped"]]))
        else:
            rows = [[name.replace("_", " "), str(s.get("runs", 0)), stat(s, "median", 1), stat(s, "max", 1)]
                    for name, s in builds["builds"].items()]
            sizes = builds["sizes"]
            out.append(("Course image build (images/course-template on the user image)",
                        f"rebuild/first {fmt(builds['ratios']['one_pin_changed/first_build'])}; the course adds "
                        f"{fmt(sizes.get('added_mb'), 'MB', 1)} to the base's {fmt(sizes.get('base_mb'), 'MB', 1)}",
                        ["build", "runs", "median", "max"], rows))
    return out


def text(results, header):
    lines = [header, ""]
    for title, note, head, rows in tables(results):
        widths = [max(len(str(x)) for x in column) for column in zip(head, *rows)]
        lines.append(title)
        lines.append("  ".join(h.ljust(w) for h, w in zip(head, widths)))
        lines.append("  ".join("-" * w for w in widths))
        lines += ["  ".join(c.ljust(w) for c, w in zip(row, widths)) for row in rows]
        lines += [note, ""]
    return "\n".join(lines)


def markdown(results, header):
    lines = [header, ""]
    for title, note, head, rows in tables(results):
        lines += [f"### {title}", ""]
        lines.append("| " + " | ".join(head) + " |")
        lines.append("|" + "|".join(" --- " for _ in head) + "|")
        lines += ["| " + " | ".join(row) + " |" for row in rows]
        lines += ["", note, ""]
    return "\n".join(lines)
