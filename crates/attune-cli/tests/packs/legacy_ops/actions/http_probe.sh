#!/bin/bash
# Reads dotenv parameters from stdin until the end of input, as the original's scripts do:
# nested objects arrive as dotted keys (headers.X-Probe='1'), values single-quoted.
set -e
set -o pipefail

url=""
headers=()
query=""
token=""
escaped_quote="'\\''"  # a quote inside a single-quoted value arrives as '\''
while IFS= read -r line; do
    [[ -z "$line" ]] && continue
    key="${line%%=*}"
    value="${line#*=}"
    value="${value#\'}"
    value="${value%\'}"
    value="${value//"$escaped_quote"/\'}"
    case "$key" in
        url) url="$value" ;;
        token) token="$value" ;;
        headers.*) headers+=("${key#headers.}: $value") ;;
        query_params.*) query="${query:+$query&}${key#query_params.}=$value" ;;
    esac
done

[[ "$url" =~ ^http://([^/:]+):([0-9]+)(/.*)?$ ]] || { echo "not an http URL: $url" >&2; exit 2; }
host="${BASH_REMATCH[1]}"
port="${BASH_REMATCH[2]}"
path="${BASH_REMATCH[3]:-/}"
[[ -n "$query" ]] && path="$path?$query"
[[ -n "$token" ]] && headers+=("Authorization: Bearer $token")

echo "probing $host:$port$path (execution $ATTUNE_EXEC_ID of pack $ATTUNE_PACK_REF)"
exec 3<>"/dev/tcp/$host/$port"
{
    printf 'GET %s HTTP/1.0\r\nHost: %s\r\n' "$path" "$host"
    for h in "${headers[@]}"; do printf '%s\r\n' "$h"; done
    printf '\r\n'
} >&3
reply="$(cat <&3 | tr -d '\r')"
status="$(head -n1 <<<"$reply" | awk '{print $2}')"
body="$(sed '1,/^$/d' <<<"$reply")"
python3 -c 'import json,sys; print(json.dumps({"status_code": int(sys.argv[1]), "request": sys.argv[2]}))' "$status" "$body"
[[ "$status" == 2* ]]
