# literals.py: every literal form the config reader accepts, checked against
# what Python's runpy builds (literals.expected.json, from gen_expected.py).
"""A module docstring is a valid, ignored statement."""

plain = 'single'
double = "double"
escapes = 'tab\tnl\nq\'dq\"bs\\bell\a\x41\101\u00e9\U0001F600 unknown\d'
raw = r'C:\new\table\''
triple = '''one
two "quoted" 'single'
'''
triple_double = """x\
y"""
concat = 'abc' "def" \
    'ghi'
utf8 = 'héllo wörld ✓ 😀'
surrogate = '\ud800'
prefixed_u = u'unicode'
empty = ''

zero = 0
ints = [1, -2, +3, --4, 1_000_000, 0x_FF, 0o17, 0b1010, 0000, 123456789012345678901234567890]
negative_big = -123456789012345678901234567890
floats = [1.5, -0.0, .25, 5., 1e3, 1E-7, 1_0.0_1, 2.5e+10, 1e400]
bools = (True, False, None)

empty_list = []
empty_tuple = ()
single_tuple = ('one',)
parenthesized = ('not a tuple')
bare_tuple = 'a', 'b',
nested = [[1, [2, [3]]], {'k': ('t', 'u')}]
multi_line = [
    'first',   # a comment inside brackets
    # a comment line inside brackets

    'second',
]
dict_value = {
    'key': 'value',
    "dup": 1,
    'dup': 2,
    'nested': {'a': [1, 2], 'b': None},
}
empty_dict = {}
reassigned = 1
reassigned = 'second wins'
