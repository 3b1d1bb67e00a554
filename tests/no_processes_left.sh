#!/bin/sh
# The suite fails if a process of this user that a test started is still
# running after it: a pool worker (C++: --zcstore-worker; Python:
# zcstore.pool_worker) or a loky worker that a task started (joblib). Such a
# process may take a moment to see its parent gone: wait up to 5 s.
me=$(id -u)
left() {
  for d in /proc/[0-9]*; do
    [ "$(stat -c %u "$d" 2>/dev/null)" = "$me" ] || continue
    cmd=$(tr '\0' ' ' < "$d/cmdline" 2>/dev/null) || continue
    case "$cmd" in
      *--zcstore-worker*|*zcstore.pool_worker*|*joblib.externals.loky*) echo "${d#/proc/}: $cmd" ;;
    esac
  done
}
tries=0
while [ -n "$(left)" ] && [ $tries -lt 50 ]; do
  sleep 0.1
  tries=$((tries + 1))
done
found=$(left)
if [ -n "$found" ]; then
  echo "processes left behind:"
  echo "$found"
  exit 1
fi
echo "no worker process left behind"
