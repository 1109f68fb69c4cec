"""examples.python_json: parameters arrive as JSON on stdin; the JSON printed becomes `result`."""
import json
import sys

params = json.load(sys.stdin)
count = params.get("count", 10)
print(json.dumps({"greeting": f"hello {params.get('name', 'world')}", "sum": sum(range(count + 1))}))
