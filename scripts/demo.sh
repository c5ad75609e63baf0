#!/usr/bin/env bash
# The main job without Docker: the exporter process, fed by the demo workflows through the
# SDK's remote sink. KEEP_SERVING=1 keeps both running (the demo on a loop) until Ctrl-C.
set -euo pipefail
BIN=${BIN:-.venv/bin}
ADDR=${PERSONA_EXPORTER_DEMO_ADDRESS:-127.0.0.1:9464}
CONFIG=exporter/persona_exporter/default_config.yaml
FIX="choose another address: PERSONA_EXPORTER_DEMO_ADDRESS=127.0.0.1:PORT make demo"

echo "Starting the exporter on $ADDR (persona-exporter serve) ..."
# Its own session: Ctrl-C in the terminal reaches the demo only, which then delivers its last
# events before the exit trap stops the exporter. setsid does not fork here (a background
# job of a script is no process group leader), so $! is the exporter's own pid.
setsid "$BIN/persona-exporter" serve --web.listen-address "$ADDR" --config.file "$CONFIG" &
exporter=$!
trap 'kill -TERM "$exporter" 2>/dev/null; wait "$exporter" 2>/dev/null || true' EXIT

# Ready when /readyz answers with the pid of the process started above: another exporter
# holding the port would answer too, and would get the demo's events.
probe() {
  "$BIN/python" - "$ADDR" "$exporter" <<'PY'
import json, sys, urllib.request
try:
    with urllib.request.urlopen(f"http://{sys.argv[1]}/readyz", timeout=1) as response:
        pid = json.load(response).get("pid")
except (OSError, ValueError):
    sys.exit(1)  # not answering (yet), or not an exporter
sys.exit(0 if pid == int(sys.argv[2]) else 3)
PY
}

ready=0
for _ in $(seq 100); do
  if ! kill -0 "$exporter" 2>/dev/null; then
    status=0; wait "$exporter" || status=$?
    echo "demo: the exporter exited (status $status) before it listened on $ADDR; its log" \
         "above says why. If the port is in use, $FIX" >&2
    exit 1
  fi
  status=0; probe || status=$?
  if [ "$status" = 0 ]; then ready=1; break; fi
  if [ "$status" = 3 ]; then
    echo "demo: another process answers on $ADDR (an exporter this demo did not start);" \
         "the demo's events would go to it. Stop it, or $FIX" >&2
    exit 1
  fi
  sleep 0.1
done
if [ "$ready" != 1 ]; then
  echo "demo: the exporter did not answer on $ADDR within 10 s; $FIX" >&2
  exit 1
fi

# The exporter's log already says whether its tracing is on; the demo's info lines would
# repeat it (warnings still show).
if [ "${KEEP_SERVING:-0}" = 1 ]; then
  echo "Exporter on http://$ADDR/metrics, fed by the demo on a loop; Ctrl-C to stop."
  "$BIN/persona-exporter" --log.level warning demo --exporter-url "http://$ADDR" --iterations 0
  exit 0
fi

"$BIN/persona-exporter" --log.level warning demo --exporter-url "http://$ADDR"
echo
echo "The exporter at http://$ADDR/metrics holds the demo's events now, for example:"
"$BIN/python" - "$ADDR" <<'PY'
import sys, urllib.request
text = urllib.request.urlopen(f"http://{sys.argv[1]}/metrics", timeout=5).read().decode()
lines = [l for l in text.splitlines() if l.startswith(("persona_llm_requests_total{",
                                                      "persona_workflow_runs_total{"))]
print("\n".join(l for l in lines if not l.endswith(" 0.0")))
PY
