#!/usr/bin/env python3
"""Compares two wire captures of the e2e suite (see dev/wire-diff): old/ and new/ hold a file
per test, one JSON object per exchange (method, path, sent, status, answer).

Each exchange is masked first: times, epoch numbers, ports, tokens, ids, temporary paths and
figures named like durations or sizes differ from run to run, not from build to build. Then,
per test and per request (method, path, body), the set of answers the old binary gave is
compared with the new one's:
  same         identical sets;
  timing       the same statuses and the same last answer, but the intermediate answers of a
               request the test repeats (polling) differ: a slower or faster run, not a change;
  DIFFERENT    anything else: printed with both answers.
A request only one side sent is listed too (a test that took another path).
Exit status 1 if anything is DIFFERENT or one-sided, so a script can stop on it.
  python3 dev/wire_diff.py OLD_DIR NEW_DIR [OLD_AGAIN_DIR] [--all]
With OLD_AGAIN_DIR, a second capture of the old binary: a request whose answers already
differ between the two old runs depends on the run (timing, random data), not on the build,
and is counted as noise instead of DIFFERENT.
"""
import json
import os
import re
import sys

MASKS = [
    (re.compile(r"\d{4}-\d{2}-\d{2}[T ]\d{2}:\d{2}(:\d{2}(\.\d+)?)?(Z|[+-]\d{2}:?\d{2})?"), "<time>"),
    (re.compile(r"\b[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}\b", re.I), "<uuid>"),
    (re.compile(r"tmk_[A-Za-z0-9_\-]+"), "<token>"),
    (re.compile(r"(127\.0\.0\.\d+|localhost|\[::1\]|0\.0\.0\.0):\d+"), "<addr>"),
    (re.compile(r"/tmp/[^\s\"',;)]+"), "<tmp>"),
    (re.compile(r"\b[0-9a-f]{16,}\b", re.I), "<hex>"),
    # API key ids (12 hex digits, drawn at random).
    (re.compile(r"(?<![0-9a-f])[0-9a-f]{12}(?![0-9a-f])"), "<keyid>"),
    # Epoch milliseconds, microseconds, nanoseconds and seconds of this decade and the next.
    (re.compile(r"(?<!\d)1[7-9]\d{11}(\d{3}){0,2}(?!\d)"), "<epoch>"),
    (re.compile(r"(?<!\d)1[7-9]\d{8}(?!\d)"), "<epoch>"),
    # Durations and rates in text: "in 12 ms", "3.2s", "after 150ms".
    (re.compile(r"\b\d+(\.\d+)?\s?(ms|µs|us|ns|s|secs|seconds|MiB/s|/s)\b"), "<duration>"),
]
# A JSON number under a key like these is a measurement or a position, not an answer.
VOLATILE_KEY = re.compile(
    r"(_ms|_us|_ns|_secs|_seconds|_at|_time|time_|elapsed|took|duration|uptime|pid|rss|"
    r"bytes|_per_s|rate|term|index|log_id|applied|committed|offset_lag|lag|age|"
    r"mem|memory|cpu|files|size|build|port|position|^id$|^job$|jobs|version|leader|count|total|events|rows|segments|batches)",
    re.I,
)


def mask_text(text):
    for pattern, repl in MASKS:
        text = pattern.sub(repl, text)
    return text


def mask_json(value, key=""):
    if isinstance(value, dict):
        return {k: mask_json(v, k) for k, v in sorted(value.items())}
    if isinstance(value, list):
        items = [mask_json(v, key) for v in value]
        # Rows of a query without ORDER BY come in any order: compare them as a multiset.
        if items and all(isinstance(v, dict) for v in items):
            items.sort(key=lambda v: json.dumps(v, sort_keys=True))
        return items
    if isinstance(value, str):
        return mask_text(value)
    if isinstance(value, (int, float)) and not isinstance(value, bool) and VOLATILE_KEY.search(key):
        return "<n>"
    if isinstance(value, float):
        # Sums of doubles differ in their last bits with the order rows meet.
        return float(f"{value:.9g}")
    if isinstance(value, int) and not isinstance(value, bool):
        return json.loads(mask_text(json.dumps(value)).replace("<epoch>", '"<epoch>"'))
    return value


def mask(text):
    stripped = text.strip()
    if stripped[:1] in ("{", "["):
        try:
            return json.dumps(mask_json(json.loads(stripped)), sort_keys=True)
        except ValueError:
            pass
    if "\n" in stripped and all(l.strip()[:1] == "{" for l in stripped.splitlines() if l.strip()):
        try:
            return "\n".join(json.dumps(mask_json(json.loads(l)), sort_keys=True) for l in stripped.splitlines() if l.strip())
        except ValueError:
            pass
    return mask_text(text)


BROKEN = [0]


def load(directory):
    tests = {}
    for name in sorted(os.listdir(directory)):
        if not name.endswith(".jsonl"):
            continue
        requests = {}
        with open(os.path.join(directory, name), encoding="utf-8") as f:
            for line in f:
                try:
                    x = json.loads(line)
                except ValueError:
                    BROKEN[0] += 1  # an interleaved append (captures before the harness's lock)
                    continue
                key = (x["method"], mask_text(x["path"]), mask(x["sent"]))
                answer = (x["status"], mask(x["answer"]))
                requests.setdefault(key, []).append(answer)
        tests[name[: -len(".jsonl")]] = requests
    return tests


def short(text, n=400):
    return text if len(text) <= n else text[:n] + f"... ({len(text)} chars)"


def main():
    args = [a for a in sys.argv[1:] if not a.startswith("--")]
    show_all = "--all" in sys.argv
    old, new = load(args[0]), load(args[1])
    again = load(args[2]) if len(args) > 2 else {}
    totals = {"same": 0, "timing": 0, "noise": 0, "DIFFERENT": 0, "one-sided": 0}
    for test in sorted(set(old) | set(new)):
        a, b = old.get(test, {}), new.get(test, {})
        lines = []
        for key in sorted(set(a) | set(b), key=str):
            if key not in a or key not in b:
                totals["one-sided"] += 1
                side = "new only" if key not in a else "old only"
                answers = (b if key not in a else a)[key]
                lines.append(f"  {side}: {key[0]} {short(key[1], 200)} {short(key[2], 200)} -> {answers[-1][0]} {short(answers[-1][1], 200)}")
                continue
            sa, sb = set(a[key]), set(b[key])
            sc = set(again.get(test, {}).get(key, [])) if again else None
            if sa == sb:
                totals["same"] += 1
            elif sc is not None and sc != sa:
                totals["noise"] += 1
                if show_all:
                    lines.append(f"  noise: {key[0]} {short(key[1], 200)}")
            elif {s for s, _ in sa} == {s for s, _ in sb} and a[key][-1] == b[key][-1]:
                totals["timing"] += 1
                if show_all:
                    lines.append(f"  timing: {key[0]} {short(key[1], 200)}")
            else:
                totals["DIFFERENT"] += 1
                lines.append(f"  DIFFERENT: {key[0]} {short(key[1], 200)} {short(key[2], 200)}")
                for s, ans in sorted(sa - sb, key=str):
                    lines.append(f"    old {s}: {short(ans)}")
                for s, ans in sorted(sb - sa, key=str):
                    lines.append(f"    new {s}: {short(ans)}")
        if lines:
            print(f"{test}:")
            print("\n".join(lines))
    print(
        f"wire-diff: {len(set(old) | set(new))} tests, requests: {totals['same']} same, "
        f"{totals['timing']} timing only, {totals['noise']} differ between two runs of the old binary too, "
        f"{totals['DIFFERENT']} different, {totals['one-sided']} sent by one side only"
        + (f"; {BROKEN[0]} unreadable capture lines skipped" if BROKEN[0] else "")
    )
    return 1 if totals["DIFFERENT"] or totals["one-sided"] else 0


if __name__ == "__main__":
    sys.exit(main())
