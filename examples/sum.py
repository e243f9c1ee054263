"""A script (no handler): reads its input as JSON on stdin and prints the sum."""

import json
import sys

numbers = json.load(sys.stdin)
print("sum:", sum(numbers))
