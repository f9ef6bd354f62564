#!/usr/bin/python3
"""Generate tests/data/timeutil/cases.txt, the corpus common/test_timeutil.c
checks time_parse_iso8601 and time_format_* against. Expected values come
from Python's datetime (run with /usr/bin/python3, CPython 3.11):

    /usr/bin/python3 tests/data/timeutil/gen_cases.py > tests/data/timeutil/cases.txt

Line formats (tab-separated, one case a line):
    parse  <text>  <microseconds since the epoch, UTC>
    reject <text>
    format <microseconds>  <date_done>  <iso_offset>  <clickhouse millis>  <clickhouse seconds>
Fractions longer than 6 digits are truncated before Python parses them
(Python 3.11 truncates too; the C side accepts at most 9 digits)."""
import calendar
import random
import re
from datetime import datetime, timedelta, timezone

EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)
rng = random.Random(20261127)


def micros(text):
    d = datetime.fromisoformat(text.replace("Z", "+00:00"))
    if d.tzinfo is None:
        d = d.replace(tzinfo=timezone.utc)
    return (d - EPOCH) // timedelta(microseconds=1)


def python_view(text):
    """The text Python is asked about: fraction cut to 6 digits."""
    if "." not in text:
        return text
    head, tail = text.split(".", 1)
    digits = re.match(r"[0-9]*", tail).group(0)
    return head + "." + digits[:6] + tail[len(digits):]


def random_text():
    y = rng.choice([rng.randint(1, 9999), rng.randint(1960, 2100)])
    m = rng.randint(1, 12)
    d = rng.randint(1, calendar.monthrange(y, m)[1])
    text = "%04d-%02d-%02d%s%02d:%02d" % (y, m, d, rng.choice("T "),
                                          rng.randint(0, 23), rng.randint(0, 59))
    if rng.random() < 0.9:
        text += ":%02d" % rng.randint(0, 59)
        n = rng.randint(0, 9)
        if n:
            text += "." + "".join(rng.choice("0123456789") for _ in range(n))
    zone = rng.randint(0, 4)
    if zone == 1:
        text += "Z"
    elif zone >= 2:
        sign = rng.choice("+-")
        hh, mm = rng.randint(0, 23), rng.choice([0, 30, 45, rng.randint(0, 59)])
        text += "%s%02d%s%02d" % (sign, hh, ":" if zone == 2 else "", mm)
    return text


def parse_cases():
    out = []
    for _ in range(3000):
        text = random_text()
        out.append("parse\t%s\t%d" % (text, micros(python_view(text))))
    return out


def reject_cases():
    out = []
    # Every month's first invalid day, in common and leap years.
    for y in (2023, 2024, 1900, 2000):
        for m in range(1, 13):
            bad = calendar.monthrange(y, m)[1] + 1
            out.append("%04d-%02d-%02dT00:00:00" % (y, m, bad))
    out += ["2026-13-01T00:00:00", "2026-00-01T00:00:00", "0000-06-01T00:00:00",
            "2026-05-25T24:00:00", "2026-05-25T23:60:00", "2026-05-25T23:59:60",
            "2026-05-25T12:00:00+24:00", "2026-05-25T12:00:00-24:00",
            "2026-05-25T12:00:00.", "2026-05-25T12:00:00+", "2026-05-25T12:00:00+1"]
    lines = []
    for text in out:
        try:
            datetime.fromisoformat(text)
        except ValueError:
            lines.append("reject\t" + text)
            continue
        raise SystemExit("Python accepts %r; not a reject case" % text)
    return lines


def format_cases():
    lo = (datetime(1, 1, 1, tzinfo=timezone.utc) - EPOCH) // timedelta(microseconds=1)
    hi = (datetime(9999, 12, 31, 23, 59, 59, 999999, tzinfo=timezone.utc) - EPOCH) \
        // timedelta(microseconds=1)
    values = [0, 1, -1, 999, 1000, 999999, 1000000, lo, hi]
    values += [rng.randint(lo, hi) for _ in range(1000)]
    values += [rng.randint(0, 4102444800 * 10**6) for _ in range(1000)]
    values += [rng.randint(0, 4102444800) * 10**6 for _ in range(100)]
    out = []
    for us in values:
        d = EPOCH + timedelta(microseconds=us)
        naive = d.replace(tzinfo=None)
        out.append("format\t%d\t%s\t%s\t%s\t%s" % (
            us, naive.isoformat(), d.isoformat(),
            naive.isoformat(sep=" ", timespec="milliseconds"),
            naive.isoformat(sep=" ", timespec="seconds")))
    return out


for line in parse_cases() + reject_cases() + format_cases():
    print(line)
