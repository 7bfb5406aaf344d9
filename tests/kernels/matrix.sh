#!/usr/bin/env bash
# Runs the kernel matrix (every VERSION through run.sh, and "host": the same checks on this machine's own
# kernel through host.sh) and rewrites the table section of docs/validation.md (between the "matrix:begin" and
# "matrix:end" markers) from the results.
#   tests/kernels/matrix.sh [run.sh options...]          e.g. --requests 50
#   VERSIONS="6.1 host" tests/kernels/matrix.sh          a subset
# Exits non-zero if any kernel's guest reported failures; the table is written either way.
set -uo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
ROOT=$(cd "$HERE/../.." && pwd)
CACHE=${KERNELS_CACHE:-$HERE/cache}
DOC=$ROOT/docs/validation.md
versions=${VERSIONS:-5.10 6.1 6.12 host}
today=$(date -u +%Y-%m-%d)
status=0
for v in $versions; do
  mkdir -p "$CACHE/$v"
  out=$(mktemp "$CACHE/$v/result.XXXXXX")
  echo "matrix: kernel $v" >&2
  if [ "$v" = host ]; then
    bash "$HERE/host.sh" "$@" >"$out" 2>"$CACHE/$v/result.err"
  else
    bash "$HERE/run.sh" "$v" "$@" >"$out" 2>"$CACHE/$v/result.err"
  fi
  rc=$?
  echo "EXIT rc=$rc" >>"$out"
  mv "$out" "$CACHE/$v/result.txt"
  echo "matrix: kernel $v rc=$rc" >&2
  [ $rc -eq 0 ] || status=1
done
# The tables cover every kernel with a result in the cache, so a subset run keeps the others' rows.
versions=$(for v in 5.10 6.1 6.12 host; do [ -f "$CACHE/$v/result.txt" ] && echo "$v"; done)

distro() {
  case $1 in
    host) kv distro "$(grep -m1 '^INFO distro=' "$CACHE/host/result.txt")" ;;
    5.10) echo "Debian 11 (bullseye)" ;;
    6.1) echo "Debian 12 (bookworm)" ;;
    6.12) echo "Debian 12 (bookworm-security, 6.12 LTS)" ;;
    *) echo "?" ;;
  esac
}
# kv KEY LINE: the value of KEY=... in a result line (values quoted with "..." may hold spaces).
kv() { sed -n "s/.*\\b$1=\\(\"[^\"]*\"\\|[^ ]*\\).*/\\1/p" <<<"$2" | tr -d '"'; }

table=$(mktemp)
{
  echo "Kernels booted under QEMU (TCG, 2 vCPU, 3 GiB) with a busybox initramfs; nginx and Apache on loopback;"
  echo "\`ja4ebpf run\` with nginx forced onto each method in turn (Apache on its uprobe; both on \`auto\` in the"
  echo "\`auto\` rows). *idle* = processes blocked in \`recvfrom\` on UDP sockets during the run (the kretprobe"
  echo "adversary). *rows* = rows the agent wrote for that server; *JA4H ok* = rows whose JA4H equals the one"
  echo "computed independently for the request sent; *drops* = the agent's \`ja4ebpf_bpf_drops_total\`;"
  echo "*packets* = the TC packet hook (JA4, JA4T) as the agent reported it, *JA4T* = rows that carry a JA4T;"
  echo "*missed* = kretprobe misses (\`kretprobe_missed\` reason, from \`kprobe_profile\`). The *host* rows ran the"
  echo "same checks on the development machine's own kernel, without a VM (\`host.sh\`: nginx and Apache on ports"
  echo "31080/31081); *refused* methods show the errno the agent reported."
  echo
  echo "| kernel | distribution | boot s | \`__x64_sys_recvfrom\` | BTF | validate | packets | initramfs MiB |"
  echo "|---|---|---|---|---|---|---|---|"
  for v in $versions; do
    f=$CACHE/$v/result.txt
    [ -f "$f" ] || continue
    rel=$(kv kernel "$(grep -m1 '^INFO kernel=' "$f")")
    boot=$(kv uptime "$(grep -m1 '^BOOT ' "$f")")
    sym=$(kv present "$(grep -m1 '^CHECK symbol=' "$f")")
    btf=$(grep -q '^CHECK btf=1' "$f" && echo yes || echo no)
    val=$(grep -m1 '^VALIDATE ' "$f" | grep -o 'rc=[0-9]*' | head -1)
    [ -n "$val" ] || val=$(grep -q '^SKIP validate' "$f" && echo "not built" || echo "-")
    size=$(kv initramfs_bytes "$(grep -m1 '^HOST ' "$f")")
    [ -n "$size" ] && size=$(awk "BEGIN {printf \"%.0f\", $size / 1048576}")
    [ -n "$rel" ] || rel="$v (did not boot: $(tail -1 "$CACHE/$v/result.err" 2>/dev/null))"
    [ "$v" = host ] && rel="$rel (host)" && boot="no VM"
    # The packet hook as the first agent run that started reported it (0 = refused).
    pk=$(kv packets "$(grep -m1 '^METHOD .*packets=' "$f")")
    [ "$pk" = 0 ] && pk="refused"
    echo "| $rel | $(distro "$v") | ${boot:--} | ${sym:-0} | $btf | $val | ${pk:--} | ${size:--} |"
  done
  echo
  echo "| kernel | method asked | server | idle | buffer | attached | sent | rows | JA4H ok | JA4T | drops | missed | date |"
  echo "|---|---|---|---|---|---|---|---|---|---|---|---|---|"
  for v in $versions; do
    f=$CACHE/$v/result.txt
    [ -f "$f" ] || continue
    rel=$(kv kernel "$(grep -m1 '^INFO kernel=' "$f")")
    [ "$v" = host ] && rel="$rel (host)"
    grep '^METHOD ' "$f" | while read -r line; do
      att=$(kv attached "$line")
      [ "$att" = 0 ] && att="no: $(kv refused "$line" | cut -c1-70)$(kv error "$line" | cut -c1-70)"
      buf=$(kv buffer "$line")
      [ "$(kv perf "$line")" = 1 ] && buf="${buf:-perfbuf} (forced)"
      echo "| ${rel:-$v} | $(kv method "$line") | $(kv server "$line") | $(kv idle "$line") |" \
        "$buf | $att |" \
        "$(kv sent "$line") | $(kv rows "$line") | $(kv right_ja4h "$line") | $(kv ja4t "$line") | $(kv drops "$line") |" \
        "$(kv kretprobe_missed "$line") | $today |"
    done
  done
} >"$table"

if ! grep -q '<!-- matrix:begin -->' "$DOC" 2>/dev/null; then
  echo "matrix: $DOC has no <!-- matrix:begin --> marker; table left in $table" >&2
  exit 1
fi
# Replace what lies between the markers, keep the rest of the document.
awk -v tf="$table" '
  /<!-- matrix:begin -->/ { print; while ((getline l < tf) > 0) print l; skip = 1; next }
  /<!-- matrix:end -->/ { skip = 0 }
  !skip { print }
' "$DOC" >"$DOC.tmp" && mv "$DOC.tmp" "$DOC"
rm -f "$table"
# The suite runs `deno fmt --check`: align the tables the way deno formats Markdown.
DENO=${DENO:-$ROOT/.tools/deno/node_modules/deno/deno}
command -v "$DENO" >/dev/null 2>&1 || DENO=$(command -v deno || true)
[ -n "$DENO" ] && "$DENO" fmt --quiet "$DOC"
echo "matrix: table written to docs/validation.md" >&2
exit $status
