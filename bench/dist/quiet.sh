# Sourced by bench/dist/*.sh: how busy the machine is around a measurement (this machine is
# shared; other processes' CPU use is the main noise in these figures).
busy() { awk '/^cpu /{print $2 + $3 + $4 + $7 + $8; exit}' /proc/stat; }  # jiffies, all cores
# wait_quiet S: up to S seconds for 3 s with the cores ≥ 90% idle.
wait_quiet() {
  local t0=$SECONDS b
  while ((SECONDS - t0 < $1)); do
    b=$(busy); sleep 3
    if (( ($(busy) - b) * 100 <= 3 * $(getconf CLK_TCK) * $(nproc) * 10 )); then return 0; fi
  done
  echo "   (still busy after $1 s: running anyway)"
}
# timed_stat STAT CMD...: runs CMD (its status returned); writes the machine's busy jiffies,
# jiffies per second, CMD's user and system CPU seconds (with its children), start, end.
timed_stat() {
  local stat=$1 b0 t0 rc=0 TIMEFORMAT='%U %S'
  shift
  b0=$(busy) t0=$(date +%s.%N)
  { time "$@" 2>&3 ; } 3>&2 2>"$stat.cpu" || rc=$?
  echo "$(( $(busy) - b0 )) $(getconf CLK_TCK) $(cat "$stat.cpu") $t0 $(date +%s.%N)" >"$stat"
  rm -f "$stat.cpu"
  return $rc
}
# others STAT: cores other processes used during it, (machine busy − CMD's CPU) / wall.
others() {
  python3 -c 'import sys; b, hz, u, s, t0, t1 = map(float, open(sys.argv[1]).read().split()); print(f"{(b / hz - u - s) / (t1 - t0):.3f}")' "$1"
}
