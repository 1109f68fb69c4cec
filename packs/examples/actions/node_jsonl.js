// examples.node_jsonl: parameters arrive as JSON on stdin; each printed line becomes one item of `result`.
let input = "";
process.stdin.on("data", (c) => (input += c));
process.stdin.on("end", () => {
  const params = JSON.parse(input || "{}");
  const n = params.lines ?? 3;
  for (let i = 0; i < n; i++) console.log(JSON.stringify({ line: i, square: i * i }));
});
