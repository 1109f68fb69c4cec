import json
import sys

params = json.loads(sys.stdin.readline())
print("starting")  # not JSON: the original skips such lines
for i in range(params["n"]):
    print(json.dumps({"i": i}))
