#!/usr/bin/env bash
# Runs the kernel matrix (every VERSION through run.sh, VERSION-arm64 through run.sh --arch arm64, and "host":
# the same checks on this machine's own kernel through host.sh) and rewrites the table section of
# docs/validation.md (between the "matrix:begin" and "matrix:end" markers) from the results.
#   tests/kernels/matrix.sh [run.sh options...]          e.g. --requests 50
#   VERSIONS="6.1 host" tests/kernels/matrix.sh          a subset
#   VERSIONS=6.1-arm64 tests/kernels/matrix.sh           Debian 12's arm64 kernel (~15 min under TCG)
#   VERSIONS=none tests/kernels/matrix.sh                no run: the tables from the cached results
# A kernel without a result in the cache keeps its rows from the document as they are. Exits non-zero if any
# kernel's guest reported failures; the table is written either way.
set -uo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
ROOT=$(cd "$HERE/../.." && pwd)
CACHE=${KERNELS_CACHE:-$HERE/cache}
DOC=$ROOT/docs/validation.md
ALL="5.10 6.1 6.12 6.1-arm64 6.12-arm64 host"
versions=${VERSIONS:-5.10 6.1 6.12 6.1-arm64 host}
[ "$versions" = none ] && versions="" # only rewrite the tables from the results at hand
status=0
for v in $versions; do
  mkdir -p "$CACHE/$v"
  out=$(mktemp "$CACHE/$v/result.XXXXXX")
  echo "matrix: kernel $v" >&2
  if [ "$v" = host ]; then
    bash "$HERE/host.sh" "$@" >"$out" 2>"$CACHE/$v/result.err"
  elif [[ $v == *-arm64 ]]; then
    bash "$HERE/run.sh" "${v%-arm64}" --arch arm64 "$@" >"$out" 2>"$CACHE/$v/result.err"
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
versions=$(for v in $ALL; do [ -f "$CACHE/$v/result.txt" ] && echo "$v"; done)

distro() {
  case $1 in
    host) kv distro "$(grep -m1 '^INFO distro=' "$CACHE/host/result.txt")" ;;
    5.10) echo "Debian 11 (bullseye)" ;;
    6.1) echo "Debian 12 (bookworm)" ;;
    6.12) echo "Debian 12 (bookworm-security, 6.12 LTS)" ;;
    6.1-arm64) echo "Debian 12 (bookworm), arm64" ;;
    6.12-arm64) echo "Debian 12 (bookworm-security, 6.12 LTS), arm64" ;;
    *) echo "?" ;;
  esac
}
# The matrix VERSION a table row's kernel cell stands for: "6.1.0-56-cloud-amd64" -> 6.1,
# "6.1.0-57-cloud-arm64" -> 6.1-arm64, "6.18.44 (host)" -> host.
row_key() {
  local k=$1
  case $k in *"(host)"*) echo host; return ;; esac
  k=$(sed -E 's/^([0-9]+\.[0-9]+).*/\1/' <<<"$1")
  [[ $1 == *arm64* ]] && k=$k-arm64
  echo "$k"
}
# Rows of table N (1: kernels, 2: methods) in the current document, for kernels whose result is not in the cache.
old_rows() { # table, version
  [ -f "$DOC" ] || return 0
  awk -v want="$1" '/<!-- matrix:begin -->/ {on = 1; n = 0; next} /<!-- matrix:end -->/ {on = 0}
    on && /^\| kernel / {n++; hdr = 1; next} on && hdr && /^\|[-| ]+\|$/ {hdr = 0; next}
    on && n == want && /^\| / {print}' "$DOC" | while IFS= read -r line; do
    cell=$(cut -d'|' -f2 <<<"$line" | sed 's/^ *//; s/ *$//')
    [ "$(row_key "$cell")" = "$2" ] || continue
    # Older documents showed the x86 wrapper's count (1) in the wrapper column.
    [ "$1" = 1 ] && line=$(awk -F'|' 'BEGIN {OFS = "|"} $5 ~ /^ *1 *$/ {$5 = " `__x64_sys_recvfrom` "} {print}' <<<"$line")
    echo "$line"
  done
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
  echo "31080/31081); *refused* methods show the errno the agent reported. The *arm64* kernels ran under"
  echo "\`qemu-system-aarch64 -M virt -cpu max\` with Debian's arm64 userland and \`dist/ja4ebpf-aarch64\`'s runtime"
  echo "and BPF object; *syscall wrapper* = the arch's \`recvfrom\` wrapper found in \`/proc/kallsyms\`."
  echo
  echo "| kernel | distribution | boot s | syscall wrapper | BTF | validate | packets | initramfs MiB |"
  echo "|---|---|---|---|---|---|---|---|"
  for v in $ALL; do
    f=$CACHE/$v/result.txt
    if [ ! -f "$f" ]; then
      old_rows 1 "$v"
      continue
    fi
    rel=$(kv kernel "$(grep -m1 '^INFO kernel=' "$f")")
    boot=$(kv uptime "$(grep -m1 '^BOOT ' "$f")")
    sym=$(grep -m1 '^CHECK symbol=' "$f")
    sym=$([ "$(kv present "$sym")" -ge 1 ] 2>/dev/null && echo "\`$(kv symbol "$sym")\`" || echo "missing")
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
    echo "| $rel | $(distro "$v") | ${boot:--} | $sym | $btf | $val | ${pk:--} | ${size:--} |"
  done
  echo
  echo "| kernel | method asked | server | idle | buffer | attached | sent | rows | JA4H ok | JA4T | drops | missed | date |"
  echo "|---|---|---|---|---|---|---|---|---|---|---|---|---|"
  for v in $ALL; do
    f=$CACHE/$v/result.txt
    if [ ! -f "$f" ]; then
      old_rows 2 "$v"
      continue
    fi
    rel=$(kv kernel "$(grep -m1 '^INFO kernel=' "$f")")
    [ "$v" = host ] && rel="$rel (host)"
    day=$(date -u -r "$f" +%Y-%m-%d)
    grep '^METHOD ' "$f" | while read -r line; do
      att=$(kv attached "$line")
      [ "$att" = 0 ] && att="no: $(kv refused "$line" | cut -c1-70)$(kv error "$line" | cut -c1-70)"
      buf=$(kv buffer "$line")
      [ "$(kv perf "$line")" = 1 ] && buf="${buf:-perfbuf} (forced)"
      echo "| ${rel:-$v} | $(kv method "$line") | $(kv server "$line") | $(kv idle "$line") |" \
        "$buf | $att |" \
        "$(kv sent "$line") | $(kv rows "$line") | $(kv right_ja4h "$line") | $(kv ja4t "$line") | $(kv drops "$line") |" \
        "$(kv kretprobe_missed "$line") | $day |"
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
