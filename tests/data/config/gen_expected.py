#!/usr/bin/python3
"""gen_expected.py: what Python's runpy sees in the config fixtures.

Writes <fixture>.expected.json (every module-level name not starting with
'__', tuples as lists) for celeryconfig.sample and literals.py; the Check
tests in worker/test_config.c compare the C reader against these files.
With --check it rewrites nothing and exits 1 if a file is stale.
Run with /usr/bin/python3 (Debian's), from anywhere.
"""
import json
import os
import runpy
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.normpath(os.path.join(HERE, '..', '..', '..'))
FIXTURES = {
    os.path.join(ROOT, 'celeryconfig.sample'): os.path.join(HERE, 'celeryconfig.sample.expected.json'),
    os.path.join(HERE, 'literals.py'): os.path.join(HERE, 'literals.expected.json'),
}


def expected(path):
    names = runpy.run_path(path)
    return json.dumps({k: v for k, v in names.items() if not k.startswith('__')}, indent=1) + '\n'


def main():
    check = '--check' in sys.argv[1:]
    stale = []
    for src, out in FIXTURES.items():
        text = expected(src)
        if check:
            try:
                with open(out, encoding='utf-8') as f:
                    if f.read() != text:
                        stale.append(out)
            except FileNotFoundError:
                stale.append(out)
        else:
            with open(out, 'w', encoding='utf-8') as f:
                f.write(text)
    for path in stale:
        print('stale: %s (run %s)' % (path, sys.argv[0]), file=sys.stderr)
    return 1 if stale else 0


if __name__ == '__main__':
    sys.exit(main())
